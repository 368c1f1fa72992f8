"""Reference recipe runs in PyTorch + pytorch-metric-learning, to set siam's recipes beside what a user would pick instead: on full Fashion-MNIST, siam's `convnet`
encoder (3 blocks of 2x[conv3x3-BN-ReLU], channels 32-64-128, max-pool between blocks, flatten 128x7x7 ->
256 -> 128, L2-normalised), flip + crop(pad 2) augmentation, AdamW 1e-3 cosine, 2 threads. Loss by name:
cosface (PML CosFaceLoss, proxies) | contrastive (PML ContrastiveLoss pos 0 neg 1 on all batch pairs, siam's recipe)
| ms (MultiSimilarityLoss). Prints test P@1 (leave-one-out within 10k test) and balanced-pair ROC-AUC after each
epoch, with wall time. usage: pml_recipe.py LOSS EPOCHS [BATCH [HELD_OUT_CLASSES, e.g. 1,5,9]]
Needs: pip install torch pytorch-metric-learning scikit-learn; the Debian dataset-fashion-mnist package.
With held-out classes, those classes are removed from training and the test set holds only them (unseen classes).

siam's copy (xtask/bench/pml_recipe_split.py) of ../shared/reference/pml_recipe.py, changed in two
places: a fifth argument TRAINED_CLASSES (e.g. 2,5,6,7,8) trains on those classes only. With it the
reference trains on exactly the classes a siam three-way split trains on (`cargo xtask bench-unseen`
prints them in each draw's metrics.jsonl), instead of on every class that is not tested, which
includes siam's validation classes: a like-for-like comparison on unseen classes. Batch = 8 x the
number of trained classes (MPerClassSampler needs m x classes >= batch), e.g.
`python3 xtask/bench/pml_recipe_split.py cosface 1 40 0,1,3 2,5,6,7,8`; the dataset folder may be
given as $FASHION_MNIST_DIR. `cargo xtask bench-unseen --vs-pytorch` runs it on every draw."""
import sys, time, gzip, struct, json
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from pytorch_metric_learning import losses, samplers
torch.set_num_threads(2); torch.manual_seed(0); np.random.seed(0)
import os
D = os.path.join(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), "")  # siam's copy: the folder may be given
def rd(p):
    b = gzip.open(p).read(); nd = b[3]; dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)
xtr, ytr = rd(D + "train-images-idx3-ubyte.gz"), rd(D + "train-labels-idx1-ubyte.gz")
xte, yte = rd(D + "t10k-images-idx3-ubyte.gz"), rd(D + "t10k-labels-idx1-ubyte.gz")
mean, std = 0.2860, 0.3530
def prep(x): return (torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255 - mean) / std
Xtr, Xte = prep(xtr), prep(xte); Ytr = torch.tensor(ytr.astype(np.int64)); yte = yte.astype(np.int64)
def block(a, b): return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
                         nn.Conv2d(b, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
net = nn.Sequential(*block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                    nn.Flatten(), nn.Linear(128 * 49, 256), nn.ReLU(), nn.Linear(256, 128))
name, epochs = sys.argv[1], int(sys.argv[2]); bs = int(sys.argv[3]) if len(sys.argv) > 3 else 64
held = [int(c) for c in sys.argv[4].split(",")] if len(sys.argv) > 4 else []  # classes never seen in training
trained = [int(c) for c in sys.argv[5].split(",")] if len(sys.argv) > 5 else []  # train on these only
if trained:
    keep = np.isin(ytr, trained); Xtr, Ytr, ytr = Xtr[torch.tensor(keep)], Ytr[torch.tensor(keep)], ytr[keep]
if held:
    keep = ~np.isin(ytr, held); Xtr, Ytr, ytr = Xtr[torch.tensor(keep)], Ytr[torch.tensor(keep)], ytr[keep]
    tk = np.isin(yte, held); Xte, yte = Xte[torch.tensor(tk)], yte[tk]
NTE = len(yte)
if name == "cosface": loss_fn = losses.CosFaceLoss(10, 128, margin=0.35, scale=30)
elif name == "contrastive": loss_fn = losses.ContrastiveLoss(pos_margin=0, neg_margin=1)
elif name == "ms": loss_fn = losses.MultiSimilarityLoss()
elif name == "ntxent": loss_fn = losses.NTXentLoss(temperature=0.1)  # self-supervised: two views, labels = instance
params = list(net.parameters()) + list(loss_fn.parameters())
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
spe = len(ytr) // bs; sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * spe, pct_start=0.05, anneal_strategy="cos")
sampler = samplers.MPerClassSampler(ytr, m=8, batch_size=bs, length_before_new_iter=spe * bs)
def aug(x):
    flip = torch.rand(x.shape[0]) < 0.5; x = torch.where(flip[:, None, None, None], x.flip(3), x)
    p = F.pad(x, (2, 2, 2, 2), value=-mean / std); out = torch.empty_like(x)
    ox, oy = np.random.randint(0, 5, x.shape[0]), np.random.randint(0, 5, x.shape[0])
    for i in range(x.shape[0]): out[i] = p[i, :, oy[i]:oy[i] + 28, ox[i]:ox[i] + 28]
    return out
def evaluate():
    net.eval()
    with torch.no_grad(): e = F.normalize(torch.cat([net(Xte[i:i + 1000]) for i in range(0, NTE, 1000)]), dim=1).numpy().astype(np.float64)
    net.train(); sq = (e * e).sum(1); c = 0
    for s in range(0, NTE, 1000):
        d = sq[s:s+1000, None] + sq[None] - 2 * e[s:s+1000] @ e.T; d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
        c += (yte[d.argmin(1)] == yte[s:s+1000]).sum()
    rng = np.random.default_rng(12345); i = rng.integers(0, NTE, 20000); j = rng.integers(0, NTE, 20000)
    same = yte[i] == yte[j]; k = np.concatenate([np.where(same)[0][:5000], np.where(~same)[0][:5000]])
    return c / NTE, roc_auc_score(same[k], -np.sqrt(((e[i[k]] - e[j[k]]) ** 2).sum(1)))
p1, auc = evaluate(); print(json.dumps({"loss": name, "epoch": 0, "train_s": 0, "p_at_1": round(float(p1), 4), "roc_auc": round(float(auc), 4), "held_out": held}), flush=True)
t0 = time.time()
for ep in range(epochs):
    idx = list(iter(sampler))
    for s in range(spe):
        b = idx[s * bs:(s + 1) * bs]
        if name == "ntxent":
            x = torch.cat([aug(Xtr[b]), aug(Xtr[b])]); y = torch.arange(len(b)).repeat(2)
        else:
            x, y = aug(Xtr[b]), Ytr[b]
        emb = F.normalize(net(x), dim=1); loss = loss_fn(emb, y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
    tt = time.time() - t0; p1, auc = evaluate()
    print(json.dumps({"loss": name, "epoch": ep + 1, "train_s": round(tt), "p_at_1": round(float(p1), 4), "roc_auc": round(float(auc), 4)}), flush=True)
    t0 += time.time() - t0 - tt  # exclude evaluation time from the training clock
