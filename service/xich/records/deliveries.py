"""Remembered registry hook deliveries (table ``hook_delivery``): a delivery acts once, whoever sends it again.

A delivery is claimed (outcome ``processing``) before anything acts on it; the unique (source, delivery id)
makes a second claim fail, also when two copies arrive at once. It is then settled with what was done, or
forgotten when acting failed on something a later try may pass (the sender then retries). A claim left
``processing`` longer than ``stale_after_s`` (its receiver was killed mid-delivery) is taken over by the next copy.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import DELIVERY_OUTCOMES, HookDelivery, utcnow


def claim_delivery(*, session: Session, source: str, delivery_id: str, event: str, model: str | None,
                   version: str | None, stale_after_s: float | None = None) -> HookDelivery | None:
    """Remember a delivery as ``processing``; None when it was received before (nothing may act on it). Committed.

    ``stale_after_s``: a claim still ``processing`` after this many seconds is taken over (its ``received_at``
    moved to now, in one conditional UPDATE, so of two copies at once only one takes it).
    """
    delivery = HookDelivery(source=source, delivery_id=delivery_id, event=event, model=model, version=version,
                            outcome="processing")
    session.add(delivery)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return _take_over(session, source, delivery_id, stale_after_s) if stale_after_s is not None else None
    return delivery


def _take_over(session: Session, source: str, delivery_id: str, stale_after_s: float) -> HookDelivery | None:
    now = utcnow()
    taken = session.execute(update(HookDelivery)
                            .where(HookDelivery.source == source, HookDelivery.delivery_id == delivery_id,
                                   HookDelivery.outcome == "processing",
                                   HookDelivery.received_at < now - timedelta(seconds=stale_after_s))
                            .values(received_at=now)
                            .execution_options(synchronize_session=False))
    session.commit()
    if taken.rowcount != 1:
        return None
    return received_delivery(session=session, source=source, delivery_id=delivery_id)


def received_delivery(*, session: Session, source: str, delivery_id: str) -> HookDelivery | None:
    return session.scalar(select(HookDelivery).where(HookDelivery.source == source,
                                                     HookDelivery.delivery_id == delivery_id))


def settle_delivery(*, session: Session, delivery: HookDelivery, outcome: str, reason: str | None = None,
                    flow_run_id: str | None = None) -> None:
    """Record what was done with a claimed delivery. Committed."""
    if outcome not in DELIVERY_OUTCOMES[1:]:
        raise ValueError(f"outcome {outcome!r}: use one of {', '.join(DELIVERY_OUTCOMES[1:])}")
    delivery.outcome, delivery.reason, delivery.flow_run_id = outcome, reason, flow_run_id
    session.commit()


def forget_delivery(*, session: Session, delivery: HookDelivery) -> None:
    """Drop a claimed delivery whose handling failed on something a later try may pass. Committed."""
    session.rollback()  # whatever the failure left pending
    session.delete(session.merge(delivery))
    session.commit()
