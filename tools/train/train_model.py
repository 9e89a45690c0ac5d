"""The MesaNet model of train_mesanet.py: fla config and construction, the dtypes inference
uses, export to a mesaserve model directory, reload, and the --cpu-check fake forward."""

from __future__ import annotations

import json
import os
import shutil

import torch

def fp32_param_names(model, config):
    """fla creates lambda_params and the gate-less o_norm weight in float32, and
    from_pretrained(dtype=bfloat16) keeps them float32; everything else is bf16."""
    names = set()
    for n, _ in model.named_parameters():
        if n.endswith('.attn.lambda_params'):
            names.add(n)
        if n.endswith('.attn.o_norm.weight') and not config.use_output_gate:
            names.add(n)
    return names


def cast_model(model, config, dtype=torch.bfloat16):
    keep = fp32_param_names(model, config)
    for n, p in model.named_parameters():  # tied weights are one Parameter: visited once, stay tied
        p.data = p.data.to(torch.float32 if n in keep else dtype)
    for _, b in model.named_buffers():
        if b.is_floating_point():
            b.data = b.data.to(dtype)
    return model


def make_config(args, vocab, bos, eos):
    from fla.models import MesaNetConfig
    cfg = MesaNetConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_heads=args.heads,
        head_dim=args.head_dim,
        conv_size=args.conv_size,
        intermediate_size=args.intermediate_size,
        lambda_lower_bound=args.lambda_lower_bound,
        use_output_gate=bool(args.output_gate),
        tie_word_embeddings=bool(args.tie),
        vocab_size=vocab,
        bos_token_id=bos,
        eos_token_id=eos,
        max_cg_step_training=args.max_cg_train,
        max_cg_step_decoding=args.max_cg_decode,
        max_position_embeddings=max(2048, args.seq_len, args.eval_window),
    )
    cfg.architectures = ['MesaNetForCausalLM']
    cfg.dtype = torch.bfloat16
    return cfg


def build_model(config, device, seed):
    from fla.models import MesaNetForCausalLM
    torch.manual_seed(seed)
    model = MesaNetForCausalLM(config)  # fp32 on the CPU, fla's own init (std = initializer_range)
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embeddings.weight:
        raise RuntimeError('fla did not tie lm_head.weight to model.embeddings.weight')
    cast_model(model, config)
    model.to(device)
    if config.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.model.embeddings.weight.data_ptr():
        raise RuntimeError('embedding tie lost after .to(device)')
    return model


def export_model(model, config, sp_path, out_dir):
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    sd = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if config.tie_word_embeddings and n == 'lm_head.weight':
            continue
        sd[n] = p.detach().to('cpu').contiguous().clone()
    text = config.to_json_string()
    assert json.loads(text)['model_type'] == 'mesa_net'
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        f.write(text)
    save_file(sd, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
    os.chmod(os.path.join(out_dir, 'model.safetensors'), 0o644)
    shutil.copyfile(sp_path, os.path.join(out_dir, 'tokenizer.model'))
    dtypes = {}
    for n, t in sd.items():
        dtypes.setdefault(str(t.dtype).replace('torch.', ''), []).append(n)
    return {k: sorted(v) for k, v in dtypes.items()}


def reload_model(out_dir, device):
    """Build the model from the exported config.json and load model.safetensors exactly."""
    from fla.models import MesaNetConfig, MesaNetForCausalLM
    from safetensors.torch import load_file
    config = MesaNetConfig.from_json_file(os.path.join(out_dir, 'config.json'))
    model = cast_model(MesaNetForCausalLM(config), config)
    sd = load_file(os.path.join(out_dir, 'model.safetensors'))
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = set(params) - ({'lm_head.weight'} if config.tie_word_embeddings else set())
    if set(sd) != expected:
        raise RuntimeError(f'export/reload key mismatch: missing={sorted(expected - set(sd))} '
                           f'unexpected={sorted(set(sd) - expected)}')
    with torch.no_grad():
        for n in expected:
            p, t = params[n], sd[n]
            if tuple(p.shape) != tuple(t.shape) or t.dtype != p.dtype:
                raise RuntimeError(f'{n}: file {t.dtype}{tuple(t.shape)} vs model {p.dtype}{tuple(p.shape)}')
            p.copy_(t)
    model.to(device).eval()
    if config.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.model.embeddings.weight.data_ptr():
        raise RuntimeError('reloaded model is not tied')
    return config, model


def install_fake_forward(model):
    """--cpu-check only: embeddings -> lm_head, differentiable, with a dict 'cache'."""
    from types import SimpleNamespace

    def fake(input_ids=None, past_key_values=None, use_cache=None, **kw):
        logits = model.lm_head(model.model.embeddings(input_ids))
        start = 0 if past_key_values is None else past_key_values['seen']
        return SimpleNamespace(logits=logits,
                               past_key_values={'seen': start + input_ids.shape[1]} if use_cache else None)

    model.forward = fake
    return model
