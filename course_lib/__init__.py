"""course_lib: the small, tested library behind the course notebooks.

Foundation models for medical imaging, hands-on. See README.md for the notebook map.
"""
__version__ = "0.1.0"

#: the course repository on GitHub ("owner/name"). A fork changes this one line and runs `python tools/badges.py`,
#: which rewrites every notebook's Open-in-Colab badge and the clone URL of its setup cell.
REPOSITORY = "fm-medimg-course/fm-medical-imaging-course"
