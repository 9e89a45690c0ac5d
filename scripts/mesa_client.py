#!/usr/bin/env python3
"""A small command-line client for mesaserve (and an example of calling it from Python).

    python3 scripts/mesa_client.py "The history of the"                # stream a completion
    python3 scripts/mesa_client.py --unary --max-new-tokens 64 "Hello"
    python3 scripts/mesa_client.py --info                              # model, limits, CG defaults

Needs `pip install grpcio grpcio-tools`; the Python stubs are generated from
proto/mesa/v1/mesa.proto into a cache folder on first use.
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs():
    out = os.path.join(tempfile.gettempdir(), 'mesaserve-python-stubs')
    proto = os.path.join(ROOT, 'proto', 'mesa', 'v1', 'mesa.proto')
    stamp = os.path.join(out, 'mesa', 'v1', 'mesa_pb2.py')
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < os.path.getmtime(proto):
        os.makedirs(out, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'grpc_tools.protoc', '-I', os.path.join(ROOT, 'proto'),
                        f'--python_out={out}', f'--grpc_python_out={out}', proto], check=True)
    sys.path.insert(0, out)
    from mesa.v1 import mesa_pb2, mesa_pb2_grpc  # noqa: E402
    return mesa_pb2, mesa_pb2_grpc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('prompt', nargs='?', default='')
    ap.add_argument('--address', default=os.environ.get('MESA_ADDRESS', 'localhost:50051'))
    ap.add_argument('--max-new-tokens', type=int, default=128)
    ap.add_argument('--temperature', type=float, default=0.8)
    ap.add_argument('--top-p', type=float, default=0.95)
    ap.add_argument('--seed', type=int, default=None)
    ap.add_argument('--stop', action='append', default=[], help='stop string (repeatable)')
    ap.add_argument('--cg-tol', type=float, default=None, help='adaptive CG tolerance for this request')
    ap.add_argument('--unary', action='store_true', help='one response instead of a stream')
    ap.add_argument('--info', action='store_true', help='print the model info and exit')
    ap.add_argument('--timeout', type=float, default=120.0, help='call deadline in seconds')
    ap.add_argument('--token-file', help='file with the bearer token the server requires')
    ap.add_argument('--tls-ca', help='PEM CA that signed the server certificate (enables TLS)')
    ap.add_argument('--tls-cert', help='PEM client certificate (mutual TLS)')
    ap.add_argument('--tls-key', help='PEM key of --tls-cert')
    args = ap.parse_args()

    import grpc
    pb, rpc = load_stubs()
    if args.tls_ca:
        read = lambda p: open(p, 'rb').read() if p else None  # noqa: E731
        creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
        channel = grpc.secure_channel(args.address, creds)
    else:
        channel = grpc.insecure_channel(args.address)
    stub = rpc.GenerationStub(channel)
    metadata = None
    if args.token_file:
        metadata = [('authorization', 'Bearer ' + open(args.token_file).read().strip())]
    if args.info:
        print(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout, metadata=metadata))
        return 0
    request = pb.GenerateRequest(
        text=args.prompt,
        sampling=pb.SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed),
        stopping=pb.StoppingCriteria(max_new_tokens=args.max_new_tokens, stop=args.stop),
        cg=pb.CgOptions(tolerance=args.cg_tol) if args.cg_tol else None)
    try:
        if args.unary:
            r = stub.Generate(request, timeout=args.timeout, metadata=metadata)
            print(args.prompt + r.text)
            final = r
        else:
            sys.stdout.write(args.prompt)
            for message in stub.GenerateStream(request, timeout=args.timeout, metadata=metadata):
                sys.stdout.write(message.text)
                sys.stdout.flush()
                final = message
            print()
    except grpc.RpcError as e:
        print(f'\nerror: {e.code().name}: {e.details()}', file=sys.stderr)
        return 1
    print(f'[{pb.FinishReason.Name(final.finish_reason)}; {final.usage.prompt_tokens} prompt + '
          f'{final.usage.completion_tokens} generated tokens; first token after '
          f'{final.timings.time_to_first_token_seconds * 1000:.1f} ms; '
          f'{final.cg.mean_iterations:.2f} CG iterations per solve]', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
