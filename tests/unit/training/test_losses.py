"""segmentation_loss: one output as it is, deep-supervision lists with nnU-Net's weights, checked by hand."""

import pytest
import torch
from monai.losses import DiceCELoss

from medseg.training.losses import deep_supervision_weights, downsample_target, full_resolution, segmentation_loss


def _sq(out, target):
    return ((out - target) ** 2).mean()


def test_weights_halve_per_scale_drop_the_lowest_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert sum(deep_supervision_weights(6)) == pytest.approx(1.0)


def test_target_is_sampled_at_the_voxel_centres_of_the_coarser_grid():
    target = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert downsample_target(target, (2, 2)).flatten().tolist() == [5, 7, 13, 15]
    assert downsample_target(target, (1, 1)).item() == 10
    assert downsample_target(target, (4, 4)) is target
    labels = torch.randint(0, 5, (2, 1, 8, 8, 6))
    small = downsample_target(labels, (4, 4, 3))
    assert small.dtype == labels.dtype and torch.equal(small, labels[:, :, 1::2, 1::2, 1::2])


def test_a_list_is_the_weighted_sum_of_the_per_scale_losses_computed_by_hand():
    target = torch.arange(16.0).reshape(1, 1, 4, 4)
    outputs = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    # full: mean(0^2..15^2) = 1240 / 16 = 77.5; 1/2: (5^2 + 7^2 + 13^2 + 15^2) / 4 = 117; 1/4: 10^2 = 100 at weight 0
    # weights 1, 1/2, 0 normalised: 2/3, 1/3, 0
    assert segmentation_loss(_sq, outputs, target).item() == pytest.approx(2 / 3 * 77.5 + 1 / 3 * 117)
    assert segmentation_loss(_sq, tuple(outputs), target).item() == pytest.approx(2 / 3 * 77.5 + 1 / 3 * 117)


def test_a_tensor_is_passed_through_and_full_resolution_picks_the_first_scale():
    out, target = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    assert segmentation_loss(_sq, out, target).item() == 1.0
    assert full_resolution(out) is out
    outs = [out, torch.zeros(1, 1, 2, 2)]
    assert full_resolution(outs) is out


def test_every_scale_takes_part_in_the_graph_and_a_right_answer_scores_lower():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (1, 1, 8, 8, 8)).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def logits_for(lab, size, scale):
        oh = torch.nn.functional.one_hot(downsample_target(lab, size)[:, 0].long(), 3).movedim(-1, 1).float()
        return (scale * oh).requires_grad_()

    right = [
        logits_for(labels, (8, 8, 8), 10.0),
        logits_for(labels, (4, 4, 4), 10.0),
        logits_for(labels, (2, 2, 2), 10.0),
    ]
    wrong = [torch.zeros(1, 3, 8, 8, 8, requires_grad=True), torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 2, 2, 2)]
    loss = segmentation_loss(loss_fn, right, labels)
    assert loss < segmentation_loss(loss_fn, wrong, labels) - 0.5
    loss.backward()
    assert all(o.grad is not None for o in right)  # the zero-weight scale too (DistributedDataParallel needs it)
    assert right[2].grad.abs().sum() == 0 and right[1].grad.abs().sum() > 0
