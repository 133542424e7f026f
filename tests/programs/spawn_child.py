"""A Python program that starts another Python program with subprocess."""

import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

for _ in tqdm(range(5), desc="parent"):
    pass
subprocess.run([sys.executable, str(Path(__file__).with_name("plain_tqdm.py"))], check=True)
