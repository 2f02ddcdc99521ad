import sys

from slurm_llm.cli import main

sys.exit(main())
