"""A program that knows nothing of Progressista: plain tqdm, then an exit code or a crash."""

import sys

from tqdm import tqdm
from tqdm.auto import trange

for _ in tqdm(range(50), desc="plain loop"):
    pass
for _ in trange(20, desc="auto range"):
    pass
if sys.argv[1:] == ["crash"]:
    for i in tqdm(range(10), desc="crashing loop"):
        if i == 4:
            raise RuntimeError("disk full")
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
