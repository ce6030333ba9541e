"""callengine: a performance-focused SIP/RTP telephony engine."""

from setuptools import find_packages, setup

setup(
    name="callengine",
    version="0.1.0",
    description="SIP/RTP call engine: IVR, PRI trunk failover, offline LevelDB config, durable call logs",
    python_requires=">=3.11",
    packages=find_packages(include=["callengine*", "ivr*", "media*", "pri*", "config_cache*"]),
    include_package_data=True,
    package_data={"config_cache": ["demo/*.json"], "media": ["prompts/*.wav"]},
    install_requires=[
        "uvloop==0.23.0",
        "prometheus-client==0.26.0",
        "plyvel==1.5.1",
        "pymongo==4.20.0",
        "numpy==2.4.6",
        "soundfile==0.14.0",
        "soxr==1.1.0",
        "PyYAML==6.0.3",
        "aiortc==1.16.0",
        "pjsua2-python==2.15.1.post1",
        "aiohttp>=3.9,<4",
    ],
    entry_points={"console_scripts": ["callengine=callengine.cli:main"]},
)
