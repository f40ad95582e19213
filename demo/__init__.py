"""The local stack for demos and tests: a LiveKit server launcher, a demo agent, the main job."""
