"""What every executor shares."""
from __future__ import annotations


class ActionFailed(Exception):
    """An action could not be carried out; the rest of the decision is skipped."""
