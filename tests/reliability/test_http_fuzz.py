"""Scenario 7 (generated half): every endpoint of billing, order and notification fuzzed from its
own OpenAPI document, through the gateway, with schemathesis: valid and invalid input alike, and
never a 5xx. (The hand-written half is `tests/e2e/test_bad_input.py`.)

Runs every operation with a bounded number of examples, positive and negative, and collects
every 5xx (with a curl line that reproduces it) before failing, so one run shows them all.
"""

from __future__ import annotations

from collections import Counter

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from replicated import LONG, ReplicatedStack
from schemathesis import GenerationMode

PREFIXES = ("/account", "/orders", "/notifications")
EXAMPLES = 300 if LONG else 40  # per operation and generation mode


def test_no_endpoint_answers_5xx_to_anything(replicated_stack: ReplicatedStack) -> None:
    gateway = replicated_stack.gateway
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    with requests.Session() as session:
        # A known account, so that generated requests also reach the code behind the 404s.
        account = session.post(f"{gateway}/account", json={"actionType": "CREATE_NEW", "amount": 100}, timeout=30)
        assert account.status_code == 200, account.text
        for prefix in PREFIXES:
            schema = schemathesis.openapi.from_url(f"{gateway}{prefix}/openapi.json", timeout=30)
            for result in schema.get_all_operations():
                operation = result.ok()
                operations += 1
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                    @given(case=operation.as_strategy(generation_mode=mode))
                    @settings(
                        max_examples=EXAMPLES,
                        deadline=None,
                        database=None,
                        derandomize=not LONG,  # the short form is the same every run
                        phases=[Phase.explicit, Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                    def fuzz(case: schemathesis.Case) -> None:
                        response = case.call(base_url=gateway, session=session, timeout=30)
                        statuses[response.status_code] += 1
                        if response.status_code >= 500:
                            failures.append(
                                f"{response.status_code} {response.text[:200]!r}\n    {case.as_curl_command()}"
                            )

                    fuzz()
    print(f"fuzz: {operations} operations, answers {dict(sorted(statuses.items()))}")
    assert operations >= 8, f"only {operations} operations in the OpenAPI documents"
    # Proof that the generated requests got through the validation to the handlers too.
    assert statuses[200] > 0 and statuses[422] > 0 and statuses[404] > 0, statuses
    assert not failures, f"{len(failures)} requests answered 5xx:\n" + "\n".join(failures[:20])
