"""Segmentation foundation models (notebooks 06, 08): UniverSeg in-context segmentation (UniverSeg, meta_train,
predict, evaluate_task, load_pretrained), partially labelled assemblies (assemble, train_partial, UniversalModel)."""
from course_lib.methods.segfm.checkpoint import load_pretrained
from course_lib.methods.segfm.evaluation import evaluate_task, evaluate_unet, predict
from course_lib.methods.segfm.meta_training import meta_train, sample_episode
from course_lib.methods.segfm.partial_labels import assemble, per_structure_dice, train_partial
from course_lib.methods.segfm.universal_model import UniversalModel
from course_lib.methods.segfm.universeg import CrossBlock, CrossConv2d, UniverSeg

__all__ = ["UniverSeg", "CrossBlock", "CrossConv2d", "meta_train", "sample_episode", "predict", "evaluate_task",
           "evaluate_unet", "load_pretrained", "assemble", "train_partial", "per_structure_dice", "UniversalModel"]
# Tyche (stochastic in-context segmentation, notebook 06)
from course_lib.methods.segfm.tyche import (Tyche, best_candidate_dice, best_candidate_loss,  # noqa: E402
                                            generalized_energy_distance, load_tyche, tta_candidates, tyche_candidates)

__all__ += ["Tyche", "best_candidate_loss", "generalized_energy_distance", "best_candidate_dice", "load_tyche",
            "tta_candidates", "tyche_candidates"]
