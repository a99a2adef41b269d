"""Multi-object tracking: `Tracker` (ByteTrack-class) turns per-frame boxes into tracks."""

from edge_agent.track.bytetrack import Tracker, TrackUpdate
from edge_agent.track.config import TrackConfig
from edge_agent.track.tracks import Track

__all__ = ["Track", "TrackConfig", "TrackUpdate", "Tracker"]
