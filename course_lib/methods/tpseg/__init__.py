"""TP-Seg (task-prototype unified lesion segmentation): ``TPSeg``/``build_tpseg``, the task-conditioned
adapter (``tca``), the prototype-guided task decoder (``pgtd``), ``TaskBatchSampler`` and ``train_unified``."""
from .tca import SplitGate, TaskConditionedAdapter, TaskConditionedEncoder, gate_temperature, load_sam2_encoder
from .pgtd import PGTDModule, PlainStage, PrototypeGuidedDecoder, ema_prototype_update
from .tp_seg import (TPSeg, TPSegConfig, TaskBatchSampler, build_tpseg, evaluate_tasks, fg_bg_separation,
                     prototype_similarity, train_unified)

__all__ = ["SplitGate", "TaskConditionedAdapter", "TaskConditionedEncoder", "gate_temperature", "load_sam2_encoder",
           "PGTDModule", "PlainStage", "PrototypeGuidedDecoder", "ema_prototype_update", "TPSeg", "TPSegConfig",
           "TaskBatchSampler", "build_tpseg", "evaluate_tasks", "fg_bg_separation", "prototype_similarity",
           "train_unified"]
