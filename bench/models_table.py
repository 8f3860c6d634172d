"""Print the README table of registered models: parameters and nominal forward FLOPs per megapixel."""

from tri_panet.models import available_models, create, model_complexity, model_info

print("| name | task | params | GFLOPs / Mpx at 48x48 | at 64x64 |")
print("|---|---|--:|--:|--:|")
for name in available_models():
    m = create(name)
    a, b = model_complexity(m, (48, 48)), model_complexity(m, (64, 64))
    ga, gb = a["flops_per_megapixel"] / 1e9, b["flops_per_megapixel"] / 1e9
    print(f"| `{name}` | {model_info(name)['task']} | {a['params']:,} | {ga:,.0f} | {gb:,.0f} |")
