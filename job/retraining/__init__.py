"""Level 6 of the job (../shared/LAYOUT.md): retraining. May import job.training and below.

champion.py (the pointer moved only by compare-and-swap, and its audit log), promotion.py (the gate
that scores a run against the champion, and the repair of a decision left unfinished), retention.py
(which finished runs are kept).
"""
