"""Dependency-light client (numpy, msgpack, websockets only): never imports torch.

from latentvla.client import WebsocketPolicyClient, ActionChunkBroker
client = WebsocketPolicyClient("127.0.0.1", 8000)
broker = ActionChunkBroker(client, action_horizon=client.metadata["horizon"])
action = broker.action(obs)  # (A,) for this control step
"""

from latentvla.client.action_chunk_broker import ActionChunkBroker
from latentvla.client.websocket_client import PolicyServerError, WebsocketPolicyClient

__all__ = ["ActionChunkBroker", "PolicyServerError", "WebsocketPolicyClient"]
