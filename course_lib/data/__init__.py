"""Data worlds: SonoSynth (procedural ultrasound), loaders for real public datasets, bring-your-own folders.
Used by every notebook (00 tours them all); all sources return samples in the schema of :mod:`course_lib.data.common`.

==========================  ====================================================================
``data.sonosynth``          the procedural B-mode ultrasound world (a package)
``data.busi``               BUSI breast ultrasound (benign/malignant/normal + masks)
``data.hc18``               HC18 fetal head circumference
``data.totalseg``           TotalSegmentator CT example (2D slices with organ label maps)
``data.folders``            your own data: a folder of images + a folder of masks with matching names
``data.seg_tasks``          segmentation task definitions (episodes for in-context segmentation)
``data.common``             the sample schema, splits, few-shot sampling, resizing, HF ``datasets``
``data.files``              file/folder helpers shared by the real-data loaders
==========================  ====================================================================
"""
