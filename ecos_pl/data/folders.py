"""`folders`: any `root/<domain>/<class>/<image>` tree as an ECOS benchmark.

Layout::

    root/
      <domain>/                 one folder per domain (style, source, site ...)
        <class>/<image>         an image of that class
        <image>                 an image directly in a domain folder: out-of-class (label NONE_LABEL)

Which files are images, and how they are decoded: `ecos_pl.data.images` (anything deeper
than `<class>/<image>` is ignored). Split (`split_folders`): the client's label space is the
sorted list of the client domain's class folders; every class folder of another domain must
be one of them (an unknown class would be neither a class of the client nor "none"). Of the
client domain's in-class images, `test_fraction` go to the client's test split and
`client_fraction` to its train split (a seeded, class-stratified choice); the rest of that
domain (and its out-of-class images) and every other domain form the pool
(`ecos_pl.data.splits.split_client_domain`). Each split is put in a seeded order; the same
inputs and seed give the same files in the same order. Decoding and its cache:
`ecos_pl.data.on_disk`.
"""

from __future__ import annotations

from ecos_pl.data.images import IMAGE_EXTENSIONS, list_entries, scan_domain
from ecos_pl.data.on_disk import OnDiskSource
from ecos_pl.data.splits import PathSplits, split_client_domain
from ecos_pl.data.splits import check_client_domain, check_fractions, check_label_space, check_max_per_domain, check_root, check_seed
from ecos_pl.protocol.errors import ECOSInputError


def split_folders(
    root,
    client_domain: str,
    client_fraction: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 1,
    max_per_domain: int | None = None,
) -> PathSplits:
    """The `folders` split as file paths: deterministic in (files on disk, arguments), nothing decoded or written."""
    client_fraction, test_fraction = check_fractions(client_fraction, test_fraction)
    seed = check_seed(seed)
    max_per_domain = check_max_per_domain(max_per_domain)
    root = check_root(root)
    folders, _ = list_entries(root)
    scanned = [scan_domain(root, d) for d in folders]
    domains = [f for f in scanned if f.n_images]
    if not domains:
        raise ECOSInputError(
            f"data.root={str(root)!r} holds no images in the expected layout <root>/<domain>/<class>/<image> "
            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    domain_names = [f.name for f in domains]
    check_client_domain(client_domain, domain_names, f"(folders with images) of data.root={str(root)!r}")
    client = domains[domain_names.index(client_domain)]
    if not client.classes:
        raise ECOSInputError(
            f"data.client_domain={client_domain!r} has no class folders with images; put its images at "
            f"{root}/{client_domain}/<class>/<image> (images directly in {client_domain}/ are out-of-class)."
        )
    class_names = sorted(client.classes)
    check_label_space(class_names, [f for f in domains if f.name != client_domain], client_domain)
    params = {"client_fraction": client_fraction, "test_fraction": test_fraction, "seed": seed, "max_per_domain": max_per_domain}
    return split_client_domain(
        domains, client_domain, class_names, client_fraction=client_fraction, test_fraction=test_fraction, seed=seed,
        max_per_domain=max_per_domain, name="folders", root=root, params=params,
    )


class Folders(OnDiskSource):
    """Any `root/<domain>/<class>/<image>` tree (see the module docstring); Hydra instantiates it, `load()` does the work."""

    name = "folders"

    def __init__(
        self,
        root,
        client_domain: str,
        client_fraction: float = 0.5,
        test_fraction: float = 0.2,
        seed: int = 1,
        image_size: int = 32,
        cache_dir=None,
        max_per_domain: int | None = None,
    ):
        self.client_fraction, self.test_fraction = check_fractions(client_fraction, test_fraction)
        super().__init__(root, client_domain, seed=seed, image_size=image_size, cache_dir=cache_dir, max_per_domain=max_per_domain)

    def split(self) -> PathSplits:
        return split_folders(self.root, self.client_domain, self.client_fraction, self.test_fraction, self.seed, self.max_per_domain)
