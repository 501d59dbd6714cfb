"""PyTorch eager CPU reference for the CPU speed goal: the same training step as vgg_flax's.

VGG-11 at width ratio 4 on 1x224x224 inputs, Xavier init, SGD lr 0.05, dropout 0.5, batch 32,
float32, inputs already at 224 px (as a torchvision DataLoader would hand them over). Not part
of the package; run it in an environment with torch:

  python benchmarks/torch_reference.py [--batch_size=32 --steps=5 --repeats=3 --threads=N]
"""

import argparse
import statistics
import time

import torch
from torch import nn

CONV_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg(ratio: int, image_size: int) -> nn.Module:
    layers, channels = [], 1
    for num_convs, features in CONV_ARCH:
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, features // ratio, 3, padding=1), nn.ReLU()]
            channels = features // ratio
        layers.append(nn.MaxPool2d(2, 2))
    side = image_size // 32
    net = nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(channels * side * side, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 10),
    )
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--ratio', type=int, default=4)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0, help='0: torch default')
    parser.add_argument('--channels_last', action='store_true')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = vgg(args.ratio, args.image_size)
    x = torch.rand(args.batch_size, 1, args.image_size, args.image_size)
    if args.channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    step()  # Warm-up.
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    print(
        f'torch {torch.__version__}, {torch.get_num_threads()} threads'
        f'{", channels_last" if args.channels_last else ""}: median '
        f'{statistics.median(rates):.1f} images/sec (min {min(rates):.1f}, max {max(rates):.1f})'
        f' at ratio {args.ratio}, {args.image_size} px, batch {args.batch_size}'
    )


if __name__ == '__main__':
    main()
