"""callengine: a performance-focused SIP/RTP telephony engine.

Dependencies are compatible ranges, so callengine installs next to its users' own
libraries; the exact versions this project tests with are in ``constraints.txt``
(``pip install -c constraints.txt ...``, as ``make install`` and CI do). Each lower
bound is the oldest release that has what the code uses and a wheel for CPython 3.11;
each upper bound is the next major version (for 0.x libraries too). The lower bounds
were checked together (2026-11-30): a venv with exactly them (uvloop 0.18.0,
prometheus-client 0.14.0, plyvel 1.5.0, pymongo 4.3.2, numpy 2.0.0, soundfile 0.12.0,
soxr 0.4.0, PyYAML 6.0.1, aiortc 1.16.0, av 14.0.0) passes the unit tests of every
package and tests/integration/test_daemon.py and test_media_sipp.py.
"""

from setuptools import find_packages, setup

TYPED = ["callengine", "ivr", "media", "pri", "config_cache"]
DATA = {
    "config_cache": ["demo/*.json", "schemas/*.json"],
    "media": ["prompts/*.wav"],
    "callengine": ["webphone/*.html", "webphone/*.js"],  # jssip.min.js: npm run build
}

setup(
    name="callengine",
    version="0.1.0",
    description="SIP/RTP call engine: IVR, PRI trunk failover, offline LevelDB config, durable call logs",
    python_requires=">=3.11",
    packages=find_packages(include=[f"{p}*" for p in TYPED]),
    # py.typed (PEP 561) in every package; the demo tenant and the bundled prompts.
    package_data={p: ["py.typed", *DATA.get(p, [])] for p in TYPED},
    zip_safe=False,  # PEP 561: type checkers read py.typed from a directory
    install_requires=[
        "uvloop>=0.18,<1",  # uvloop.run() (0.18)
        "prometheus-client>=0.14,<1",  # prometheus_client.registry.Collector (0.14)
        "plyvel>=1.5,<2",  # first wheels for CPython 3.11 (1.5.0)
        "pymongo>=4.3.2,<5",  # first wheels for CPython 3.11; typed MongoClient[...] (4.1)
        "numpy>=2.0,<3",
        "soundfile>=0.12,<1",  # wheels that bundle libsndfile (0.12)
        "soxr>=0.4,<2",  # built against numpy 2 (0.4)
        "PyYAML>=6.0.1,<7",
        # config_cache/validation.py: the JSON Schemas compiled to Python (draft-07,
        # fast_fail and collect-all modes). Lower bound: the version tested.
        "fastjsonschema>=2.22,<3",
        "aiortc>=1.16,<2",  # G.722/Opus codec classes as media/codecs/_aiortc.py calls them
        "av>=14,<20",  # imported by media/codecs/_aiortc.py; aiortc 1.16's own range
        "pylibsrtp>=0.10,<2",  # imported by media/srtp.py; aiortc 1.16's own lower bound
        "httpx>=0.27,<1",  # imported by ivr/_http.py (AsyncClient, Limits, verify=SSLContext)
        "aiohttp>=3.9,<4",  # imported by callengine/admin.py (web.Application, AppRunner)
        "wsproto>=1.3.2,<2",  # SIP over WebSocket, callengine/transport/ws.py (tested: 1.3.2)
        # media/azure.py (Media Storage on Azure Blob; its asyncio API runs on aiohttp,
        # required above). Lower bound: the version tested (older ones not checked).
        "azure-storage-blob>=12.31,<13",
    ],
    extras_require={
        # `callengine dial` and the interop tests' peer. The wheel's pjproject is
        # 2.15.1: callengine/softphone.py works around that release's limits.
        "softphone": ["pjsua2-python>=2.15.1,<2.16"],
    },
    entry_points={"console_scripts": ["callengine=callengine.cli:main"]},
)
