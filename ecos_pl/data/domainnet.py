"""`domainnet`: DomainNet from disk, as unpacked from the official zips; never downloaded.

Layout::

    root/
      clipart/<class>/<image>     (clipart.zip unpacks to clipart/<class>/...)
      infograph/<class>/<image>
      painting/<class>/<image>
      quickdraw/<class>/<image>
      real/<class>/<image>
      sketch/<class>/<image>

Classes: `classes="fl10"` (default) is the 10-class subset of the federated-learning
literature (FedBN): bird, feather, headphones, ice_cream, teapot, tiger, whale, windmill,
wine_glass, zebra; or a list of class folder names; or "all" (every class folder of the
client's domain). Only the chosen class folders are read, in every domain; each must exist
in every domain. Images directly in a domain folder are out-of-class (label NONE_LABEL).
Split, as in the paper, when the official `<domain>_test.txt` lists are in the root (as
shipped with DomainNet): a listed image belongs to its domain's test split and is never in
the pool; the client is tested on its domain's listed images, and half of the domain's
other images (seeded, class-stratified) are the client's training split, the other half and
the other domains' unlisted images the pool (`client_fraction`/`test_fraction` are not used).
Without the lists: half of the client's domain is the client, the rest of it and the other
five domains are the pool. With the default fractions (the same meaning as in `folders`:
shares of the client domain's in-class images), 40% of the client domain is client train and
10% client test (together the client's 50%), a seeded class-stratified choice; the other 50%
goes to the pool. `max_per_domain` caps each domain first (seeded, class-stratified).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ecos_pl.data.images import scan_domain
from ecos_pl.data.on_disk import OnDiskSource
from ecos_pl.data.splits import PathSplits, split_client_domain
from ecos_pl.data.splits import check_client_domain, check_domain_folders, check_fractions, check_label_space, check_max_per_domain, check_seed
from ecos_pl.protocol.errors import ECOSInputError

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
#: the 10 classes FedBN (Li et al., 2021) and later FL work use.
FL10 = ("bird", "feather", "headphones", "ice_cream", "teapot", "tiger", "whale", "windmill", "wine_glass", "zebra")
#: client train + client test = 50% of the client's domain (the paper's split); the rest goes to the pool.
CLIENT_FRACTION = 0.4
TEST_FRACTION = 0.1

LAYOUT = f"put each domain's images at <root>/<domain>/<class>/<image> (domains {', '.join(DOMAINS)}), as unpacked from the official DomainNet zips"


def resolve_classes(classes) -> list[str] | None:
    """"fl10" -> the 10 FL classes, "all" -> None (every class folder of the client), a list -> its names, sorted."""
    if isinstance(classes, str):
        if classes in ("fl10", "all"):
            return sorted(FL10) if classes == "fl10" else None
    elif isinstance(classes, Iterable) and not isinstance(classes, (bytes, Mapping)):
        names = [str(c) for c in classes]
        if names and len(set(names)) == len(names) and all(n and "/" not in n and not n.startswith(".") for n in names):
            return sorted(names)
    raise ECOSInputError(f"data.classes must be 'fl10', 'all' or a non-empty list of distinct class folder names, got {classes!r}.")


def split_domainnet(
    root,
    client_domain: str = "clipart",
    seed: int = 1,
    classes="fl10",
    client_fraction: float = CLIENT_FRACTION,
    test_fraction: float = TEST_FRACTION,
    max_per_domain: int | None = None,
) -> PathSplits:
    """The DomainNet split as file paths: deterministic in (files on disk, arguments), nothing decoded or written."""
    check_client_domain(client_domain, DOMAINS, "of DomainNet")
    client_fraction, test_fraction = check_fractions(client_fraction, test_fraction)
    seed = check_seed(seed)
    max_per_domain = check_max_per_domain(max_per_domain)
    wanted = resolve_classes(classes)
    root = check_domain_folders(root, DOMAINS, "DomainNet", LAYOUT)
    scanned = {d: scan_domain(root, d, d, wanted) for d in DOMAINS}
    if wanted is None:
        class_names = sorted(scanned[client_domain].classes)
        if not class_names:
            raise ECOSInputError(f"data.client_domain={client_domain!r} has no class folders with images under {client_domain}/; {LAYOUT}.")
        check_label_space(class_names, [scanned[d] for d in DOMAINS if d != client_domain], client_domain)
    else:
        class_names = wanted
        absent = [f"{d}/{c}/" for d in DOMAINS for c in class_names if c not in scanned[d].classes]
        if absent:
            more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
            raise ECOSInputError(
                f"data.root={str(root)!r} lacks class folders with images for data.classes={classes!r}: "
                f"{', '.join(absent[:3])}{more}; {LAYOUT}."
            )

    test_lists = official_test_lists(root)
    if test_lists and client_domain not in test_lists:
        raise ECOSInputError(
            f"data.root={str(root)!r} has the official test lists of {', '.join(sorted(test_lists))} but not "
            f"{client_domain}_test.txt for data.client_domain={client_domain!r}; add it, or remove the lists to split by fractions."
        )
    params = {
        "classes": classes if isinstance(classes, str) else list(class_names),
        "client_fraction": client_fraction, "test_fraction": test_fraction, "seed": seed, "max_per_domain": max_per_domain,
        **({"official_test_lists": sorted(test_lists)} if test_lists else {}),
    }
    return split_client_domain(
        [scanned[d] for d in DOMAINS], client_domain, class_names, client_fraction=client_fraction, test_fraction=test_fraction,
        seed=seed, max_per_domain=max_per_domain, name="domainnet", root=root, params=params, test_lists=test_lists,
    )


def official_test_lists(root) -> dict[str, set[str]]:
    """{domain: image paths} from the `<domain>_test.txt` files in `root` (lines `clipart/bird/x.jpg 12`), where present."""
    lists = {}
    for d in DOMAINS:
        path = root / f"{d}_test.txt"
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            lists[d] = {line.split()[0] for line in lines if line.strip()}
    return lists

class DomainNet(OnDiskSource):
    """Config-friendly DomainNet source (see the module docstring); `load()` decodes (or reads the cache)."""

    name = "domainnet"

    def __init__(
        self,
        root,
        client_domain: str = "clipart",
        seed: int = 1,
        image_size: int = 64,
        classes="fl10",
        client_fraction: float = CLIENT_FRACTION,
        test_fraction: float = TEST_FRACTION,
        cache_dir=None,
        max_per_domain: int | None = None,
    ):
        check_client_domain(client_domain, DOMAINS, "of DomainNet")
        self.client_fraction, self.test_fraction = check_fractions(client_fraction, test_fraction)
        super().__init__(root, client_domain, seed=seed, image_size=image_size, cache_dir=cache_dir, max_per_domain=max_per_domain)
        resolve_classes(classes)
        self.classes = classes if isinstance(classes, str) else [str(c) for c in classes]

    def split(self) -> PathSplits:
        return split_domainnet(
            self.root, self.client_domain, self.seed, self.classes, self.client_fraction, self.test_fraction, self.max_per_domain
        )
