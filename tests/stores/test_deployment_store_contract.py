"""The DeploymentStore contract, run against every store backend (see conftest.py).

One owner per serve application name: the tenant of the name's record that is not DELETED.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from synapse_server.core import InvalidArgumentError
from synapse_server.core.deployments import (
    DeploymentNameHeldError,
    DeploymentRecord,
    DeploymentStatus,
    DeploymentStore,
    ReplicaRecord,
    ReplicaState,
)
from synapse_server.stores import Stores

from tests.stores.conftest import StoreBackend

pytestmark = pytest.mark.timeout(60)

LIVE = DeploymentStatus.RUNNING


def _record(
    name: str = "app",
    tenant: str = "t1",
    status: DeploymentStatus = LIVE,
    plugin: str = "p",
    endpoint: str = "",
) -> DeploymentRecord:
    return DeploymentRecord(
        id=0,
        tenant=tenant,
        name=name,
        plugin=plugin,
        action="deploy",
        status=status,
        endpoint_action=endpoint,
    )


@pytest.fixture
def deployments(stores: Stores) -> DeploymentStore:
    return stores.deployments


async def test_a_record_reads_back_with_every_field(deployments: DeploymentStore) -> None:
    replicas = (
        ReplicaRecord("r1", ReplicaState.RUNNING, ("3", "4"), loaded_models_known=True),
        ReplicaRecord("r2", ReplicaState.STARTING),
    )
    record = DeploymentRecord(
        id=77,  # ignored: the store assigns ids
        tenant="t1",
        name="app",
        plugin="p",
        action="deploy",
        job_id="job-1",
        status=DeploymentStatus.UNHEALTHY,
        status_message="one replica is starting ü",
        route_prefix="/app",
        model_ids=(3, 4),
        ray_actor_options={"num_cpus": 0.5, "resources": {"x": 1}},
        endpoint_action="infer",
        create_time=1.0,  # ignored: the store sets both times
        update_time=1.0,
        replicas=replicas,
    )
    before = time.time()
    stored, created = await deployments.upsert(record)
    assert created and stored.id > 0
    assert stored.create_time >= before and stored.update_time == stored.create_time
    assert stored == replace(
        record, id=stored.id, create_time=stored.create_time, update_time=stored.update_time
    )
    assert await deployments.get(stored.id) == stored
    assert await deployments.find_by_name("t1", "app") == stored
    assert await deployments.get(stored.id + 1000) is None


async def test_upsert_updates_the_tenants_record_of_the_same_name(
    deployments: DeploymentStore,
) -> None:
    first, _ = await deployments.upsert(_record())
    changed = DeploymentRecord(
        id=0,
        tenant="t1",
        name="app",
        plugin="p2",
        action="deploy2",
        job_id="job-2",
        status=DeploymentStatus.DEPLOYING,
        status_message="again",
        route_prefix="/b",
        model_ids=(9,),
        ray_actor_options={"num_gpus": 1},
        endpoint_action="e2",
        replicas=(ReplicaRecord("r9", ReplicaState.UPDATING),),
    )
    again, created = await deployments.upsert(changed)
    assert not created and again.id == first.id
    assert again.create_time == first.create_time and again.update_time >= first.update_time
    assert again == replace(
        changed, id=first.id, create_time=first.create_time, update_time=again.update_time
    )
    # Another tenant's name is another record; the same name of another tenant is not.
    other, created_other = await deployments.upsert(_record(name="other"))
    assert created_other and other.id != first.id


async def test_a_name_has_one_live_owner(deployments: DeploymentStore) -> None:
    assert await deployments.holder("app") is None
    first, _ = await deployments.upsert(_record(tenant="team-a"))
    assert await deployments.holder("app") == "team-a"
    with pytest.raises(DeploymentNameHeldError):
        await deployments.upsert(_record(tenant="team-b"))
    assert await deployments.find_by_name("team-b", "app") is None
    # The owner updates its own record freely, whatever its status.
    for status in DeploymentStatus:
        if status is not DeploymentStatus.DELETED:
            await deployments.upsert(_record(tenant="team-a", status=status))
            assert await deployments.holder("app") == "team-a"
    # A DELETED record may be written for a held name (it holds nothing).
    ghost, created = await deployments.upsert(
        _record(tenant="team-b", status=DeploymentStatus.DELETED)
    )
    assert created and await deployments.holder("app") == "team-a"
    # Once the owner's record is DELETED the name is free; the next taker holds it.
    owner = await deployments.find_by_name("team-a", "app")
    assert owner is not None
    await deployments.update(replace(owner, status=DeploymentStatus.DELETED))
    assert await deployments.holder("app") is None
    taken, created = await deployments.upsert(_record(tenant="team-c"))
    assert created and await deployments.holder("app") == "team-c"
    with pytest.raises(DeploymentNameHeldError):
        await deployments.upsert(_record(tenant="team-a"))
    # team-a's old record stays as it was: DELETED, with its own id.
    old = await deployments.get(first.id)
    assert old is not None and old.status is DeploymentStatus.DELETED and taken.id != first.id
    assert (await deployments.get(ghost.id)).status is DeploymentStatus.DELETED  # type: ignore[union-attr]


async def test_two_servers_racing_for_a_name_give_it_to_one_tenant(
    backend: StoreBackend, deployments: DeploymentStore
) -> None:
    second = await backend.open()
    try:
        results = await asyncio.gather(
            *(
                store.upsert(_record(tenant=f"team-{i}"))
                for i in range(8)
                for store in (deployments, second.deployments)
            ),
            return_exceptions=True,
        )
    finally:
        await second.close()
    won = [r for r in results if isinstance(r, tuple)]
    assert all(isinstance(r, DeploymentNameHeldError) for r in results if r not in won)
    owners = {record.tenant for record, _ in won}
    assert len(owners) == 1 and await deployments.holder("app") in owners


async def test_find_by_endpoint_is_per_tenant_and_plugin_newest_first(
    deployments: DeploymentStore,
) -> None:
    a, _ = await deployments.upsert(_record(name="a", endpoint="infer"))
    b, _ = await deployments.upsert(
        _record(name="b", endpoint="infer", status=DeploymentStatus.DELETED)
    )
    await deployments.upsert(_record(name="c", endpoint="other"))
    await deployments.upsert(_record(name="d", endpoint="infer", plugin="q"))
    await deployments.upsert(_record(name="e", endpoint="infer", tenant="t2"))
    found = await deployments.find_by_endpoint("t1", "p", "infer")
    assert [r.id for r in found] == [b.id, a.id]
    assert await deployments.find_by_endpoint("t3", "p", "infer") == []


async def test_listings_are_per_tenant_newest_first_filtered_and_paged(
    deployments: DeploymentStore,
) -> None:
    statuses = [LIVE, DeploymentStatus.DELETED, LIVE, DeploymentStatus.FAILED, LIVE]
    created = []
    for i, status in enumerate(statuses):
        plugin = "q" if i == 4 else "p"
        created.append(
            (await deployments.upsert(_record(f"app{i}", status=status, plugin=plugin)))[0]
        )
    await deployments.upsert(_record(name="theirs", tenant="t2"))
    ids = [r.id for r in reversed(created)]
    page = await deployments.list("t1", (), "", "", 2, "")
    assert [r.id for r in page.deployments] == ids[:2] and page.next_page_token
    page2 = await deployments.list("t1", (), "", "", 2, page.next_page_token)
    page3 = await deployments.list("t1", (), "", "", 2, page2.next_page_token)
    assert [r.id for r in page2.deployments + page3.deployments] == ids[2:]
    assert page3.next_page_token == ""
    live = await deployments.list("t1", [LIVE], "", "", 10, "")
    assert [r.name for r in live.deployments] == ["app4", "app2", "app0"]
    ended = await deployments.list(
        "t1", [DeploymentStatus.DELETED, DeploymentStatus.FAILED], "", "", 10, ""
    )
    assert [r.name for r in ended.deployments] == ["app3", "app1"]
    assert [r.name for r in (await deployments.list("t1", (), "q", "", 10, "")).deployments] == [
        "app4"
    ]
    named = await deployments.list("t1", (), "", "app2", 10, "")
    assert [r.name for r in named.deployments] == ["app2"]
    assert (await deployments.list("t2", (), "", "app2", 10, "")).deployments == []
    assert [r.name for r in (await deployments.list("t2", (), "", "", 10, "")).deployments] == [
        "theirs"
    ]


async def test_a_bad_page_token_is_invalid_argument(stores: Stores) -> None:
    await stores.deployments.upsert(_record(name="a"))
    await stores.deployments.upsert(_record(name="b"))
    token = (await stores.deployments.list("t1", (), "", "", 1, "")).next_page_token
    assert token
    for bad in ("not-a-token", token[:-2] + "x="):
        with pytest.raises(InvalidArgumentError):
            await stores.deployments.list("t1", (), "", "", 10, bad)


async def test_update_writes_status_message_replicas_and_time_only(
    deployments: DeploymentStore,
) -> None:
    stored, _ = await deployments.upsert(_record())
    replicas = (ReplicaRecord("r1", ReplicaState.STOPPING, ("5",), True),)
    changed = replace(
        stored,
        status=DeploymentStatus.UNHEALTHY,
        status_message="sick",
        replicas=replicas,
        update_time=stored.update_time + 10,
        # Not the update's to change:
        plugin="other",
        route_prefix="/other",
        model_ids=(1,),
    )
    await deployments.update(changed)
    assert await deployments.get(stored.id) == replace(
        stored,
        status=DeploymentStatus.UNHEALTHY,
        status_message="sick",
        replicas=replicas,
        update_time=stored.update_time + 10,
    )


async def test_mark_all_live_deleted_leaves_ended_records(deployments: DeploymentStore) -> None:
    records = {}
    for status in DeploymentStatus:
        records[status], _ = await deployments.upsert(
            replace(
                _record(name=status.value, status=status),
                replicas=(ReplicaRecord("r", ReplicaState.RUNNING),),
            )
        )
    live = [
        s for s in DeploymentStatus if s not in (DeploymentStatus.DELETED, DeploymentStatus.FAILED)
    ]
    assert await deployments.mark_all_live_deleted("gone with the server") == len(live)
    for status, before in records.items():
        after = await deployments.get(before.id)
        assert after is not None
        if status in live:
            assert after.status is DeploymentStatus.DELETED
            assert after.status_message == "gone with the server" and after.replicas == ()
        else:
            assert after == before
    assert await deployments.mark_all_live_deleted("again") == 0


async def test_records_survive_a_reopen(backend: StoreBackend) -> None:
    first = await backend.open()
    try:
        stored, _ = await first.deployments.upsert(_record())
    finally:
        await first.close()
    second = await backend.open()
    try:
        assert await second.deployments.get(stored.id) == stored
        assert await second.deployments.holder("app") == "t1"
    finally:
        await second.close()
