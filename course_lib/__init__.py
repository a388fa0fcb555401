"""course_lib: the small, tested library behind the course notebooks.

Foundation models for medical imaging, hands-on. See README.md for the notebook map.
"""
__version__ = "0.1.0"
