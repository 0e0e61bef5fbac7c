import pytest
import torch

from d3hr.utils.dist import World


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 7, 101])
def test_rank_shares_partition_the_rows_like_tensor_split(n, size):
    spans = [World(rank=r, size=size).span(n) for r in range(size)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps or overlaps
    for r in range(size):
        assert torch.equal(World(rank=r, size=size).rows(n), torch.arange(n).tensor_split(size)[r])
