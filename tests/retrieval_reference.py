"""The reference's re-rank, for the tests to compare against: one fusion forward of k pairs per query."""
import torch


@torch.no_grad()
def one_query_at_a_time(score, img, txt, k: int, direction: str) -> torch.Tensor:
    """(N_query, k) candidates ranked by ``score(image_embeds, image_atts, text_embeds, text_atts)``, best first."""
    sims = img.feats @ txt.feats.t()
    if direction == "t2i":
        sims = sims.t()
    out = []
    for q in range(sims.shape[0]):
        cand = sims[q].topk(k).indices
        if direction == "i2t":
            ie, te, ta = img.embeds[q].expand(k, -1, -1), txt.embeds[cand], txt.atts[cand]
        else:
            ie, te, ta = img.embeds[cand], txt.embeds[q].expand(k, -1, -1), txt.atts[q].expand(k, -1)
        scores = score(ie, torch.ones(ie.shape[:2], dtype=torch.long), te, ta)
        out.append(cand[scores.argsort(descending=True)])
    return torch.stack(out)
