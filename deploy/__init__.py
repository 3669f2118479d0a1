"""Deployment of the node's scoring to Azure (score.py, Dockerfile, aci.py)."""

import os

# Before torch loads (score.py imports this package first): GNU OpenMP's spinning threads
# make PyTorch many times slower on a shared machine (see `cxr-node bench`).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS threads would compete with the model's for the same cores (see above).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
