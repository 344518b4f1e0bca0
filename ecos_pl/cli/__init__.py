"""The two parties as programs: `ecos-cloud` and `ecos-client`, which meet only through message files.

    ecos-cloud  compress | select | proxy-features | labels | split-folders
    ecos-client score | label

Every file that crosses between them is an ECOS message (`ecos_pl.protocol.messages`):
versioned, self-describing, checksummed and validated on load. What leaves the client
is exactly its R scores (and, for `pseudo_label`, one label per proxy sample). Every bad
input ends the program with one sentence on stderr, exit code 2, and nothing written.
No Lightning import: these programs need only numpy, faiss and (for images) torch/timm.
"""
