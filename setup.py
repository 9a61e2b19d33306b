"""Packaging for the mille-xterm load balancer (lbagent, lbserver, lbclient, lbctl)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "common" / "version.py").read_text()).group(1)

setup(
    name="mille-xterm-loadbalancer",
    version=VERSION,
    description="Load balancer for LTSP thin-client terminals and DNS aliases",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.10",
    packages=find_packages(include=["common", "lbagent", "lbserver", "lbserver.*", "lbclient"]),
    package_data={"common": ["schemas/*.rng"], "lbserver.mgmt": ["static/*"]},
    install_requires=[
        "lxml>=4.9",
        "psutil>=5.9",
        "python-daemon>=2.3",
        "dnspython>=2.3",
        "defusedxml>=0.7",
        "prometheus_client>=0.16",
    ],
    extras_require={
        # uvloop makes the terminal service faster; lbserver uses it when installed.
        "fast": ["uvloop>=0.17"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "aiosmtpd>=1.4", "import-linter>=2.1"],
    },
    entry_points={
        "console_scripts": [
            "lbagent = lbagent.entry:main",
            "lbserver = lbserver.entry:main",
            "lbclient = lbclient.client:main",
            "lbctl = lbserver.mgmt.ctl:main",
        ],
    },
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "License :: OSI Approved :: GNU General Public License v2 or later (GPLv2+)",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
