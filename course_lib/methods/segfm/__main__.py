"""Command line of the segfm family: rebuild the universeg-tiny checkpoint (notebook 06, data_cards/universeg-tiny.md).

    python -m course_lib.methods.segfm --train [--steps N] [--out PATH] [--device DEV]
"""
from course_lib.methods.segfm.checkpoint import main

if __name__ == "__main__":
    main()
