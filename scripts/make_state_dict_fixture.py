"""Writes a PyTorch state_dict with safetensors.torch.save_file, exactly as a user would, and
torch's forward output for one input, so tests can check that such a file loads unchanged.

    python3 scripts/make_state_dict_fixture.py tests/fixtures/state_dict
"""
import argparse
import os

import torch
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(7)
    model = torch.nn.LSTM(input_size=5, hidden_size=7, num_layers=2, bidirectional=True)
    save_file(model.state_dict(), os.path.join(args.out_dir, "lstm_2layer_bidir.safetensors"))
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        output, (h_n, c_n) = model(x)
    save_file(
        {"input": x, "output": output, "h_n": h_n, "c_n": c_n},
        os.path.join(args.out_dir, "lstm_2layer_bidir_io.safetensors"),
    )


if __name__ == "__main__":
    main()
