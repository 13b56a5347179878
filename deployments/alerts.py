"""Alerts without Prefect Cloud: Prefect automations that post to a Slack-compatible webhook.

One notification block (``drywall-alerts``, a custom webhook that posts ``{"text": ...}`` as Slack,
Mattermost, Rocket.Chat and Teams' Slack connectors accept) and four automations on the Prefect
server, all created or updated in place by name, so running the setup again changes nothing:

- a flow run failed or crashed (any flow on this server);
- the promotion gate refused a candidate for a regression (``drywall.gate.refused`` labelled
  ``drywall.regression: "true"``);
- the nightly evaluation found the champion regressed (``drywall.model.regressed``);
- field images drifted (``drywall.drift.detected``).

The server's own automation services send them, so alerts work while no worker is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

BLOCK_NAME = "drywall-alerts"


@dataclass(frozen=True)
class Alert:
    name: str
    match: dict[str, str]
    expect: tuple[str, ...]
    subject: str
    body: str


ALERTS = (
    Alert(
        "drywall: flow run failed",
        {"prefect.resource.id": "prefect.flow-run.*"},
        ("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
        "drywall-qa: flow run {{ flow_run.name }} {{ flow_run.state.name }}",
        "Flow run {{ flow_run.name }} ({{ flow.name }}{% if deployment %}, deployment {{ deployment.name }}"
        "{% endif %}) ended {{ flow_run.state.name }}: {{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
    ),
    Alert(
        "drywall: gate refused a regression",
        {"prefect.resource.id": "drywall.model.*", "drywall.regression": "true"},
        ("drywall.gate.refused",),
        "drywall-qa: candidate {{ event.payload.version }} refused (regression)",
        "The promotion gate refused candidate {{ event.payload.version }}; champion stays "
        "{{ event.payload.champion }}.\n{% for r in event.payload.reasons %}- {{ r }}\n{% endfor %}",
    ),
    Alert(
        "drywall: champion regressed",
        {"prefect.resource.id": "drywall.model.*"},
        ("drywall.model.regressed",),
        "drywall-qa: champion {{ event.payload.version }} regressed",
        "Nightly evaluation: champion {{ event.payload.version }} regressed on the latest validated data:\n"
        "{% for r in event.payload.regressions %}- {{ r }}\n{% endfor %}",
    ),
    Alert(
        "drywall: field images drifted",
        {"prefect.resource.id": "drywall.field-images"},
        ("drywall.drift.detected",),
        "drywall-qa: field images drifted from champion {{ event.payload.champion }}",
        "{{ (event.payload.drifted_share|float * 100)|round|int }}% of features drifted on "
        "{{ event.payload.n_current }} field images: {{ event.payload.drifted_columns|join(', ') }}",
    ),
)


def ensure_notification_block(url: str) -> str:
    """The ``drywall-alerts`` webhook block, pointing at ``url``; returns its document id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="drywall-qa",
        url=url,
        method="POST",
        json_data={"text": "*{{subject}}*\n{{body}}"},
        timeout=10,
    )
    return str(block.save(BLOCK_NAME, overwrite=True))


def ensure_alerts(url: str) -> list[str]:
    """Create or update the notification block and every alert automation; returns their names."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block_id = ensure_notification_block(url)
    names = []
    for alert in ALERTS:
        wanted = Automation(
            name=alert.name,
            description="drywall-qa alert (deployments/alerts.py)",
            trigger=EventTrigger(
                match=alert.match,
                expect=set(alert.expect),
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[SendNotification(block_document_id=block_id, subject=alert.subject, body=alert.body)],
        )
        try:
            current = Automation.read(name=alert.name)
        except ValueError:  # no automation of that name yet
            current = None
        if current is None:
            wanted.create()
        else:
            wanted.id = current.id
            wanted.update()
        names.append(alert.name)
    return names
