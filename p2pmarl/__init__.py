"""p2pmarl: fully decentralized peer-to-peer multi-agent reinforcement learning."""

__version__ = "0.1.0"
