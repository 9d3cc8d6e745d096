"""Where ``medseg run --engine ray`` puts its actors: ``plan_actors`` and ``wants_gpu`` on nodes given as plain
resource dicts (no Ray), with the placement the module's docstring documents worked out by hand."""

from __future__ import annotations

import pytest

from medseg.runner.cluster import ActorSlot, ClusterError, Node, alive_nodes, describe_plan, plan_actors, wants_gpu

# two GPU nodes and a CPU-only node, in the order alive_nodes gives them
G2 = Node("g2" * 8, "10.0.0.1", {"CPU": 8.0, "GPU": 2.0})
G1 = Node("g1" * 8, "10.0.0.2", {"CPU": 8.0, "GPU": 1.0})
C16 = Node("c16" * 6, "10.0.0.3", {"CPU": 16.0})
GPU_CLUSTER = [G2, G1, C16]
CPU_CLUSTER = [Node("a" * 16, "10.0.0.1", {"CPU": 2.0}), Node("b" * 16, "10.0.0.2", {"CPU": 4.0})]


def placed(slots: list[ActorSlot]) -> list[tuple]:
    return [(s.node_id[:3], s.num_cpus, s.num_gpus) for s in slots]


def test_one_actor_per_gpu_spread_round_robin_and_none_on_a_cpu_only_node():
    assert placed(plan_actors(GPU_CLUSTER, gpu=True)) == [("g2g", 1.0, 1.0), ("g1g", 1.0, 1.0), ("g2g", 1.0, 1.0)]


def test_half_a_gpu_per_worker_puts_two_actors_on_each_gpu():
    slots = plan_actors(GPU_CLUSTER, gpu=True, gpus_per_worker=0.5)
    assert placed(slots) == [("g2g", 1.0, 0.5), ("g1g", 1.0, 0.5)] * 2 + [("g2g", 1.0, 0.5)] * 2
    assert sum(s.num_gpus for s in slots if s.node_id == G2.node_id) == 2.0  # never more than the node declares


def test_a_gpu_node_with_fewer_cpus_than_gpu_slots_is_capped_by_its_cpus():
    node = Node("n" * 16, "10.0.0.9", {"CPU": 3.0, "GPU": 4.0})
    assert len(plan_actors([node], gpu=True)) == 3
    assert len(plan_actors([node], gpu=True, gpus_per_worker=0.25)) == 3
    assert len(plan_actors([node], gpu=True, gpus_per_worker=2)) == 2
    assert plan_actors([Node("z" * 16, "10.0.0.8", {"GPU": 1.0})], gpu=True) == []  # no CPU: no actor


def test_workers_caps_the_total_and_spreads_before_doubling_up():
    assert placed(plan_actors(GPU_CLUSTER, gpu=True, workers=2)) == [("g2g", 1.0, 1.0), ("g1g", 1.0, 1.0)]
    assert len(plan_actors(GPU_CLUSTER, gpu=True, workers=99)) == 3  # not more than the GPUs hold
    cpu = plan_actors(CPU_CLUSTER, gpu=False, workers=5)
    assert [s.node_id[0] for s in cpu] == ["a", "b", "a", "b", "b"]  # a has 2 CPUs, b 4
    assert {(s.num_cpus, s.num_gpus) for s in cpu} == {(1.0, 0.0)}
    assert len(plan_actors(CPU_CLUSTER, gpu=False, workers=50)) == 6  # one per CPU at most


def test_cpu_runs_get_one_actor_per_node_without_workers():
    assert [(s.node_id[0], s.num_cpus, s.num_gpus) for s in plan_actors(CPU_CLUSTER, gpu=False)] == [
        ("a", 1.0, 0.0),
        ("b", 1.0, 0.0),
    ]
    assert plan_actors([Node("h" * 16, "10.0.0.1", {"CPU": 0.0})], gpu=False) == []  # a head without CPUs


def test_device_cpu_on_a_gpu_cluster_asks_for_no_gpu_and_uses_every_node():
    assert wants_gpu("cpu", GPU_CLUSTER) is False and wants_gpu("CPU", GPU_CLUSTER) is False
    slots = plan_actors(GPU_CLUSTER, gpu=wants_gpu("cpu", GPU_CLUSTER))
    assert placed(slots) == [("g2g", 1.0, 0.0), ("g1g", 1.0, 0.0), ("c16", 1.0, 0.0)]


def test_the_device_decides_whether_the_run_uses_gpus():
    assert wants_gpu("", GPU_CLUSTER) and wants_gpu("cuda", GPU_CLUSTER) and wants_gpu("cuda:1", GPU_CLUSTER)
    assert not wants_gpu("", CPU_CLUSTER) and not wants_gpu("cpu", CPU_CLUSTER)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", " CUDA:1 "])
def test_cuda_on_a_cluster_without_gpus_is_a_cluster_error(device):
    with pytest.raises(ClusterError) as info:
        wants_gpu(device, CPU_CLUSTER)
    msg = str(info.value)
    assert info.value.exit_code == 4 and "\n" not in msg
    assert "no node of the Ray cluster declares a GPU" in msg and "--device cpu" in msg


@pytest.mark.parametrize("gpw", [0, -0.5, 65])
def test_a_gpus_per_worker_out_of_range_is_a_cluster_error(gpw):
    with pytest.raises(ClusterError, match="--gpus-per-worker"):
        plan_actors(GPU_CLUSTER, gpu=True, gpus_per_worker=gpw)
    assert len(plan_actors(CPU_CLUSTER, gpu=False, gpus_per_worker=gpw)) == 2  # ignored on CPUs


def test_a_replacement_fills_what_is_left_and_avoids_the_lost_node_while_another_has_room():
    # one actor on each GPU node was running; the one on G1 was lost: the replacement goes to G2's free GPU
    slots = plan_actors(GPU_CLUSTER, gpu=True, workers=2, existing={G2.node_id: 1}, prefer_not=frozenset({G1.node_id}))
    assert placed(slots) == [("g2g", 1.0, 1.0)]
    # no other node has room: the lost node is used after all
    full = {G2.node_id: 2}
    assert placed(plan_actors(GPU_CLUSTER, gpu=True, workers=3, existing=full, prefer_not=frozenset({G1.node_id}))) == [
        ("g1g", 1.0, 1.0)
    ]
    assert plan_actors(GPU_CLUSTER, gpu=True, workers=2, existing={G2.node_id: 2}) == []  # the cap is reached


def test_alive_nodes_skips_dead_nodes_and_orders_them_by_address():
    class FakeRay:
        @staticmethod
        def nodes():
            return [
                {"NodeID": "b" * 16, "NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 2.0}},
                {"NodeID": "d" * 16, "NodeManagerAddress": "10.0.0.0", "Alive": False, "Resources": {"CPU": 9.0}},
                {"NodeID": "a" * 16, "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"GPU": 1.0}},
            ]

    nodes = alive_nodes(FakeRay)
    assert [(n.node_id[0], n.ip, n.resources) for n in nodes] == [
        ("a", "10.0.0.1", {"GPU": 1.0}),
        ("b", "10.0.0.2", {"CPU": 2.0}),
    ]


def test_describe_plan_names_the_nodes_and_what_each_actor_asks_for():
    text = describe_plan(plan_actors(GPU_CLUSTER, gpu=True, gpus_per_worker=0.5, workers=3), GPU_CLUSTER)
    assert text == (
        "3 actors x (1 CPU, 0.5 GPU): node 10.0.0.1 (id g2g2g2g2g2g2) x2, node 10.0.0.2 (id g1g1g1g1g1g1) x1"
    )
    assert describe_plan([], GPU_CLUSTER) == "no actor"
