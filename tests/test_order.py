"""The id order that snapshots and ``GET /tasks`` read in pieces while the table changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from progressista.server.order import CHUNK, IdOrder


def test_ids_come_in_the_order_they_were_first_stored_and_removals_leave() -> None:
    order = IdOrder()
    for i in range(CHUNK * 2 + 5):
        order.add(f"t{i}")
    for i in range(CHUNK):  # the first chunk empties and goes away
        order.remove(f"t{i}")
    order.remove("t-never")
    order.add("t0")  # back: at the end, as a dict would put it
    assert list(order) == [f"t{i}" for i in range(CHUNK, CHUNK * 2 + 5)] + ["t0"]
    assert len(order) == CHUNK + 6


def test_a_cursor_resumes_after_an_id_and_from_the_start_for_one_gone() -> None:
    order = IdOrder()
    for i in range(10):
        order.add(f"t{i}")
    assert order.cursor("t6").take(100) == ["t7", "t8", "t9"]
    assert order.cursor("t9").take(100) == []
    assert order.cursor("gone").take(3) == ["t0", "t1", "t2"]


def test_a_reader_sees_what_was_there_and_stays_there_whatever_happens_between_pieces() -> None:
    order = IdOrder()
    for i in range(CHUNK * 3):
        order.add(f"t{i}")
    cursor = order.cursor()
    first = cursor.take(1000)
    assert first == [f"t{i}" for i in range(1000)]
    for i in range(CHUNK, CHUNK * 2):  # a whole chunk not read yet goes away
        order.remove(f"t{i}")
    order.add("new")
    rest: list[str] = []
    while not cursor.done:
        rest.extend(cursor.take(1000))
    # A chunk already copied is read as it was; one not reached yet, as it is when reached.
    expected = [f"t{i}" for i in range(1000, CHUNK)] + [
        f"t{i}" for i in range(CHUNK * 2, CHUNK * 3)
    ]
    assert rest == [*expected, "new"]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60)),
        st.tuples(st.just("remove"), st.integers(0, 60)),
        st.tuples(st.just("read"), st.integers(1, 7)),
    ),
    max_size=300,
)


@given(operations)
def test_it_reads_like_an_ordered_dict_while_ids_come_and_go(steps: list[tuple[str, int]]) -> None:
    import progressista.server.order as module

    saved = module.CHUNK
    module.CHUNK = 4  # small chunks, so that every boundary is crossed
    try:
        order, reference = IdOrder(), dict[str, None]()
        for value in range(0, 40, 3):
            order.add(f"t{value}")
            reference[f"t{value}"] = None
        cursor = order.cursor()
        stable = set(reference)  # there when the read began, and never removed during it
        seen: list[str] = []
        for action, value in steps:
            task_id = f"t{value}"
            if action == "add" and task_id not in reference:
                order.add(task_id)
                reference[task_id] = None
            elif action == "remove" and task_id in reference:
                order.remove(task_id)
                del reference[task_id]
                stable.discard(task_id)
            elif action == "read":
                seen.extend(cursor.take(value))
            assert list(order) == list(reference)
        while not cursor.done:
            seen.extend(cursor.take(3))
        assert all(seen.count(task_id) == 1 for task_id in stable)
        # In the order they were stored, for those that stayed.
        assert [t for t in seen if t in stable] == [t for t in reference if t in stable]
    finally:
        module.CHUNK = saved
