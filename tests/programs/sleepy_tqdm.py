"""A loop slow enough to be interrupted; prints "ready" when it is under way."""

import time

from tqdm import tqdm

for i in tqdm(range(1000), desc="sleepy"):
    if i == 1:
        print("ready", flush=True)
    time.sleep(0.01)
