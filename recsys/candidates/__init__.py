"""Candidate generation: embeddings learned from logged impressions, FAISS top-k retrieval.

The first ranking stage narrows the catalog to a few hundred items per user. FAISS is
imported only inside this package, so other components depend on the
:class:`recsys.protocols.CandidateGenerator` protocol rather than on an index library.
"""

from recsys.candidates.embeddings import (
    EmbeddingModel,
    TrainingOptions,
    roc_auc,
    train_embeddings,
)
from recsys.candidates.faiss_index import FaissRetriever
from recsys.candidates.persistence import (
    RETRIEVAL_ARTIFACT,
    load_retrieval_artifact,
    save_retrieval_artifact,
)

__all__ = [
    "RETRIEVAL_ARTIFACT",
    "EmbeddingModel",
    "FaissRetriever",
    "TrainingOptions",
    "load_retrieval_artifact",
    "roc_auc",
    "save_retrieval_artifact",
    "train_embeddings",
]
