"""Fakes of what a ServerApp's grid hands back, for exchanges tested in this process (the flower extra installed)."""

from __future__ import annotations


class Reply:
    """A reply as `grid.send_and_receive` returns it: the answering node, its content or its error."""

    def __init__(self, node, content=None, error=None):
        from flwr.app import Metadata

        self.metadata = Metadata(run_id=0, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                                 group_id="", created_at=0.0, ttl=60.0, message_type="query.ecos")
        self.content, self._error = content, error

    def has_error(self):
        return self._error is not None

    @property
    def error(self):
        return self._error


def fake_task_identity(monkeypatch) -> None:
    """The run identity a ServerApp process has (Flower's `Message` reads it), for grids faked in this process."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 0), ("_node_id", 1), ("_task_id", 0)):  # node 1: the SuperLink's
        monkeypatch.setattr(TaskIdentity, name, value)
