"""Candidate generation: a two-tower model trained on logs, served from a FAISS index.

The first ranking stage narrows the catalog to a few hundred items per user. FAISS is
imported only inside this package, so other components depend on the
:class:`recsys.protocols.CandidateGenerator` protocol rather than on an index library.

Serving and the simulator's training env ask the same question, "candidates for these
recent clicks": :meth:`FaissRetriever.candidates_for_histories` answers a batch of users with
an organic block and an ad block per user (:class:`CandidateBatch`), and
:meth:`FaissRetriever.candidates_for_history` one user; :func:`load_retrieval` loads a
retriever ready for both, with the item table stored beside it.

Entry points for the CLI: :func:`train_candidates` (``recsys train candidates --data``),
:func:`evaluate_candidates` (``recsys evaluate candidates``) and
:func:`run_retrieval_benchmark` (``recsys bench retrieval``; import it from
:mod:`recsys.candidates.bench`, which pulls in the simulator's world generator).
"""

from recsys.candidates.blocks import CandidateBatch, HistoryEncoder
from recsys.candidates.embeddings import (
    EmbeddingModel,
    TrainingOptions,
    roc_auc,
    train_embeddings,
)
from recsys.candidates.evaluate import evaluate_candidates, evaluation_settings
from recsys.candidates.faiss_index import FaissRetriever, ItemCatalog, UserEncoder
from recsys.candidates.index import IndexReport, IndexSpec, build_index, choose_index
from recsys.candidates.metrics import (
    ItemKNNScorer,
    PopularityScorer,
    Split,
    full_ranking_metrics,
    leave_last_out_split,
    random_split,
)
from recsys.candidates.persistence import (
    RETRIEVAL_ARTIFACT,
    LoadedRetrieval,
    load_retrieval,
    load_retrieval_artifact,
    load_two_tower,
    save_retrieval_artifact,
)
from recsys.candidates.training import (
    TrainedCandidates,
    catalog_from_dataset,
    dataset_from_clicks,
    dataset_from_logged_feedback,
    load_training_data,
    train_candidates,
)
from recsys.candidates.two_tower import TwoTowerModel, TwoTowerOptions, train_two_tower

__all__ = [
    "RETRIEVAL_ARTIFACT",
    "CandidateBatch",
    "EmbeddingModel",
    "FaissRetriever",
    "HistoryEncoder",
    "IndexReport",
    "IndexSpec",
    "ItemCatalog",
    "ItemKNNScorer",
    "LoadedRetrieval",
    "PopularityScorer",
    "Split",
    "TrainedCandidates",
    "TrainingOptions",
    "TwoTowerModel",
    "TwoTowerOptions",
    "UserEncoder",
    "build_index",
    "catalog_from_dataset",
    "choose_index",
    "dataset_from_clicks",
    "dataset_from_logged_feedback",
    "evaluate_candidates",
    "evaluation_settings",
    "full_ranking_metrics",
    "leave_last_out_split",
    "load_retrieval",
    "load_retrieval_artifact",
    "load_training_data",
    "load_two_tower",
    "random_split",
    "roc_auc",
    "save_retrieval_artifact",
    "train_candidates",
    "train_embeddings",
    "train_two_tower",
]
