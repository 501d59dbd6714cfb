"""PyTorch peer of vgg_flax's train step, for speed comparisons on the same device.

The same network as a vgg_flax config (blocks of 3x3 convolutions with ReLU, optional BatchNorm,
2x2 max-pooling; a dense head with ReLU and dropout; Xavier init) and the same step: SGD with
optional (Nesterov) momentum and weight decay on kernels only, cross-entropy with optional label
smoothing, optional random translation and horizontal flips of each image, and an optional moving
average of the weights and BatchNorm statistics updated after every step. Its inputs are already
at the image size on the device (as a DataLoader with its resizing done would hand them over:
less work than vgg_flax's step, which gathers, resizes and scales its uint8 batch itself). Each
variant is timed after warm-up, median of repeats:

  eager, eager_channels_last, compile, compile_channels_last  (torch.compile, default mode)

on CUDA with bfloat16 autocast where asked. Not part of the package; run it where torch is:

  python benchmarks/torch_reference.py --device=cuda --dtype=bfloat16 --batch_size=128 \
      [--image_size=224 --ratio=4 --conv_arch=1x64,1x128,2x256,2x512,2x512 --dense=4096,4096]
      [--bn --dropout=0.0 --momentum=0.9 --nesterov --weight_decay=5e-4 --label_smoothing=0.1]
      [--ema_decay=0.999 --translate=2 --flip --variants=eager,compile --output=torch.json]
  python benchmarks/torch_reference.py --like=benchmark.json  # vgg_flax.benchmark's net and step

It prints a line per variant and the best, and writes them all as JSON with --output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable

try:
    import torch
    from torch import nn
except ImportError:  # One line, not a traceback; cpu_peer.py and cpu_ops.py import this first.
    sys.exit('PyTorch is not installed in this Python: pip install -r benchmarks/requirements.txt')

VARIANTS = ('eager', 'eager_channels_last', 'compile', 'compile_channels_last')
VGG11 = '1x64,1x128,2x256,2x512,2x512'


def parse_arch(text: str) -> list[tuple[int, int]]:
    """'1x64,2x128' -> [(1, 64), (2, 128)]: convolutions and full width per block."""
    return [(int(n), int(w)) for n, w in (block.split('x') for block in text.split(','))]


def vgg(
    conv_arch: list[tuple[int, int]],
    ratio: int,
    image_size: int,
    dense: list[int],
    bn: bool,
    dropout: float,
) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 1
    for num_convs, features in conv_arch:
        for _ in range(num_convs):
            width = features // ratio
            layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not bn))
            layers += [nn.BatchNorm2d(width), nn.ReLU()] if bn else [nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    side = image_size // 2 ** len(conv_arch)
    head: list[nn.Module] = [nn.Flatten()]
    features = channels * side * side
    for units in dense:
        head += [nn.Linear(features, units), nn.ReLU()]
        head += [nn.Dropout(dropout)] if dropout else []
        features = units
    net = nn.Sequential(*layers, *head, nn.Linear(features, 10))
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def augment(x: torch.Tensor, translate: int, flip: bool) -> torch.Tensor:
    """Each image shifted by up to `translate` pixels (the border black) and mirrored with
    probability 1/2, drawn per image as vgg_flax's step does."""
    batch, _, height, width = x.shape
    if translate:
        padded = nn.functional.pad(x, (translate,) * 4)
        offsets = torch.randint(0, 2 * translate + 1, (2, batch, 1), device=x.device)
        rows = (offsets[0] + torch.arange(height, device=x.device))[:, None, :, None]
        cols = (offsets[1] + torch.arange(width, device=x.device))[:, None, None, :]
        images = torch.arange(batch, device=x.device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[images, channels, rows, cols].contiguous(memory_format=_layout(x))
    if flip:
        mirrored = torch.rand(batch, 1, 1, 1, device=x.device) < 0.5
        x = torch.where(mirrored, x.flip(-1), x)
    return x


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
    return torch.channels_last if channels_last else torch.contiguous_format


def time_variant(args: argparse.Namespace, variant: str, device: torch.device) -> list[float]:
    """Images/sec of each repeat of `args.steps` steps of one variant, after warm-up."""
    torch.manual_seed(0)
    net = vgg(
        parse_arch(args.conv_arch),
        args.ratio,
        args.image_size,
        [int(u) for u in args.dense.split(',') if u],
        args.bn,
        args.dropout,
    ).to(device)
    x = torch.rand(args.batch_size, 1, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    if variant.endswith('channels_last'):
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    model: Callable[[torch.Tensor], torch.Tensor] = (
        torch.compile(net) if variant.startswith('compile') else net
    )
    kernels = [p for p in net.parameters() if p.ndim > 1]
    others = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{'params': kernels, 'weight_decay': args.weight_decay}, {'params': others}],
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    averaged = [
        t.detach().clone() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()
    ]
    tracked = [t for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()]
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == 'bfloat16'
        else contextlib.nullcontext()
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(augment(x, args.translate, args.flip)), y)
        loss.backward()
        optimizer.step()
        if args.ema_decay:
            with torch.no_grad():
                torch._foreach_lerp_(averaged, tracked, 1 - args.ema_decay)

    for _ in range(args.warmup):  # torch.compile compiles in the first calls.
        step()
    synchronize(device)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    return rates


def like(args: argparse.Namespace) -> None:
    """Sets the network, image size, batch and dtype to those of a vgg_flax benchmark."""
    with open(args.like) as f:
        config = json.load(f)['config']
    args.conv_arch = ','.join(f'{n}x{w}' for n, w in config['blocks'])
    args.dense = ','.join(map(str, config['dense_features']))
    args.dropout, args.bn = config['dropout_rate'], config['use_bn']
    args.ratio, args.image_size = config['width_ratio'], config['image_size']
    args.batch_size = config['batch_size'] * config['population_size']
    args.dtype = 'bfloat16' if config['dtype'] == 'bfloat16' else 'float32'
    step = config['train_step']
    args.lr, args.momentum, args.nesterov = (
        step['learning_rate'],
        step['momentum'],
        step['nesterov'],
    )
    args.weight_decay, args.label_smoothing = step['weight_decay'], step['label_smoothing']
    args.ema_decay, args.translate, args.flip = step['ema_decay'], step['translate'], step['flip']
    if step['erase_prob']:
        raise SystemExit(f'{args.like}: random erasing has no peer here; benchmark without it.')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--ratio', type=int, default=4)
    parser.add_argument('--conv_arch', default=VGG11, help='blocks as CONVSxWIDTH, full widths')
    parser.add_argument('--dense', default='4096,4096', help="the head's hidden units ('' none)")
    parser.add_argument('--bn', action='store_true', help='BatchNorm after every convolution')
    parser.add_argument('--dropout', type=float, default=0.5)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--momentum', type=float, default=0.0)
    parser.add_argument('--nesterov', action='store_true')
    parser.add_argument('--weight_decay', type=float, default=0.0, help='on kernels only')
    parser.add_argument('--label_smoothing', type=float, default=0.0)
    parser.add_argument('--ema_decay', type=float, default=0.0)
    parser.add_argument('--translate', type=int, default=0, help='pixels, per image at random')
    parser.add_argument('--flip', action='store_true', help='mirror half the images')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0, help='CPU threads; 0: torch default')
    parser.add_argument('--variants', default=','.join(VARIANTS))
    parser.add_argument('--output', default='', help='write the results here as JSON')
    parser.add_argument(
        '--like', default='', help='a vgg_flax.benchmark --output JSON: its network, batch, dtype'
    )
    args = parser.parse_args()
    if args.like:
        like(args)
    if unknown := set(args.variants.split(',')) - set(VARIANTS):
        parser.error(f'unknown variants {sorted(unknown)}; choose from {", ".join(VARIANTS)}')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {}
    for variant in args.variants.split(','):
        rates = time_variant(args, variant, device)
        results[variant] = {
            'median': statistics.median(rates),
            'min': min(rates),
            'max': max(rates),
        }
        print(
            f'{variant:<22} {results[variant]["median"]:>12,.1f} images/sec '
            f'(min {min(rates):,.1f}, max {max(rates):,.1f})',
            flush=True,
        )
    best = max(results, key=lambda name: results[name]['median'])
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(
        f'torch {torch.__version__} on {name}, {args.dtype}, {args.image_size} px, ratio '
        f'{args.ratio}, batch {args.batch_size}: best {best} '
        f'{results[best]["median"]:,.1f} images/sec'
    )
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(
                {
                    'torch': torch.__version__,
                    'device': name,
                    'args': vars(args),
                    'variants': results,
                    'best': best,
                },
                f,
                indent=2,
            )


if __name__ == '__main__':
    main()
