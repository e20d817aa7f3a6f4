"""pytest set-up for the whole repository: the notebook runs in quick mode under tests."""

import os
import sys
from pathlib import Path

os.environ.setdefault("AGE_REGRESSION_QUICK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))
