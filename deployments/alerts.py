"""Alerts without Prefect Cloud: Prefect automations that post to a Slack-compatible webhook.

One notification block (``drywall-alerts``, a custom webhook that posts ``{"text": ...}`` as Slack,
Mattermost, Rocket.Chat and Teams' Slack connectors accept) and four automations on the Prefect
server, all created or updated in place by name, so running the setup again changes nothing:

- a flow run failed or crashed (any flow on this server);
- the promotion gate refused a candidate for a regression (``drywall.gate.refused`` labelled
  ``drywall.regression: "true"``);
- the nightly evaluation found the champion regressed (``drywall.model.regressed``);
- field images drifted (``drywall.drift.detected``);
- a prediction service refused a new champion (``drywall.serve.refused``: its warm-up masks differed
  from those recorded at publish, a checksum failed, or it would not load).

The server's own automation services send them, so alerts work while no worker is running.

One more automation needs no webhook and is always created: **zombie runs**. A worker (or the host
under it) killed mid-run leaves its flow run Running for ever. With
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` set in every worker's environment (the stack, compose and the
Kubernetes job template set 30 s), a running flow emits ``prefect.flow-run.heartbeat``; when no
heartbeat (nor a final state) follows the last one within ``ZOMBIE_AFTER`` the server marks the run
Crashed, which the failed-run alert then reports and which the retrain flow retries (training resumes
from its staged checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

BLOCK_NAME = "drywall-alerts"
ZOMBIE_NAME = "drywall: crash runs whose heartbeats stopped"
ZOMBIE_AFTER = timedelta(seconds=180)  # 6 heartbeats at 30 s: longer than an API outage of a minute plus one beat


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
    Alert(
        "drywall: prediction service refused a model version",
        {"prefect.resource.id": "drywall.serve.*"},
        ("drywall.serve.refused",),
        "drywall-qa: {{ event.resource.id }} refused model {{ event.payload.version }} ({{ event.payload.kind }})",
        "The prediction service did not swap in {{ event.payload.version }}: {{ event.payload.reason }}. "
        "It keeps serving {{ event.payload.serving }}.",
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


def _upsert(wanted) -> None:
    """Create the automation, or update the one of the same name in place (setup is idempotent)."""
    from prefect.automations import Automation

    try:
        current = Automation.read(name=wanted.name)
    except ValueError:  # no automation of that name yet
        current = None
    if current is None:
        wanted.create()
    else:
        wanted.id = current.id
        wanted.update()


def ensure_zombie_automation(after: timedelta = ZOMBIE_AFTER) -> str:
    """Mark a flow run Crashed when its heartbeats stop (its process, worker or host died)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    _upsert(
        Automation(
            name=ZOMBIE_NAME,
            description="drywall-qa: a run whose heartbeats stop is Crashed (deployments/alerts.py)",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match={"prefect.resource.id": "prefect.flow-run.*"},
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=after,
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {after.total_seconds():.0f}s: its process, worker or host died",
                )
            ],
        )
    )
    return ZOMBIE_NAME


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
        _upsert(wanted)
        names.append(alert.name)
    return names
