"""Golden hashes of SonoSynth: generation must stay bit-identical across refactors.

Every case below generates a fixed set of samples (anatomies, centers, probes, lesion attributes,
normal images, label noise, report frequencies, artifacts off, threaded batches, 32/64/128 px,
seeds 0..3) and hashes each output with SHA-256 (first 16 hex digits kept): arrays by dtype,
shape and bytes; lists and strings through canonical JSON. ``GOLDEN`` was recorded with the code
before the split of ``sonosynth.py`` into a package (numpy 2.x, x86-64 Linux).

If a hash changes, the generator's output changed: either revert, or (for an intended change of
the world) regenerate the table with ``python tests/data/test_sonosynth_golden.py`` and say why in
the commit. Float images go through BLAS matrix products, so another CPU or BLAS build may change
their last bits (then only the ``image`` hashes differ: check the discrete outputs still match).
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest

from course_lib.data import sonosynth as ss

_FIXED = {
    "spiculated": {"margin": "spiculated", "calcifications": "micro", "echogenicity": "heterogeneous", "size_mm": 30.0},
    "angular": {"margin": "angular", "echogenicity": "isoechoic", "calcifications": "macro"},
    "microlob": {"margin": "microlobulated", "shape": "irregular", "posterior": "shadowing"},
    "indistinct": {"margin": "indistinct", "orientation": "taller_than_wide", "posterior": "combined"},
}

CASES: dict[str, dict] = {}
for _seed in range(4):
    for _size in (64, 128):
        CASES[f"mix-s{_seed}-{_size}"] = dict(n=6, seed=_seed, image_size=_size)
CASES.update({
    "breast-sector-C": dict(n=4, seed=1, anatomies=("breast",), centers=("C",), probe="sector"),
    "thyroid-A-128": dict(n=4, seed=2, anatomies=("thyroid",), centers=("A",), image_size=128),
    "node-D": dict(n=6, seed=3, anatomies=("lymph_node",), centers=("D",)),
    "abdomen-linear-B": dict(n=4, seed=0, anatomies=("abdomen",), centers=("B",), probe="linear"),
    "abdomen-sector-128": dict(n=4, seed=1, anatomies=("abdomen",), image_size=128),
    "normal-noise": dict(n=10, seed=2, p_lesion=0.5, label_noise=0.3),
    "no-artifacts": dict(n=6, seed=3, artifacts=False),
    "concepts": dict(n=6, seed=0, concept_freq={"calcifications": 1.0, "size": 0.0, "location": 1.0}),
    "test-split": dict(n=4, seed=0, start=200_000_000),
    "threaded-32": dict(n=300, seed=9, image_size=32),
    **{f"fixed-{k}": dict(n=6, seed=1, attributes=v, image_size=64 if k != "angular" else 128)
       for k, v in _FIXED.items()},
})

_ARRAYS = ("image", "mask", "label_map", "box", "measurement", "label", "pixel_spacing_mm")
_DTYPES = dict(image=np.float32, mask=np.uint8, label_map=np.uint8, box=np.float32, measurement=np.float32,
               label=np.int64, pixel_spacing_mm=np.float32)
_LISTS = ("attributes", "report", "anatomy", "center", "probe", "id", "source", "structures", "class_names")


def _h(obj) -> str:
    if isinstance(obj, np.ndarray):
        data = f"{obj.dtype.str}{obj.shape}".encode() + np.ascontiguousarray(obj).tobytes()
    else:
        data = json.dumps(obj, sort_keys=True, default=repr).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def case_hashes(kw: dict) -> dict:
    """Hash of every output of ``generate_batch(**kw)``, plus the concepts parsed from the reports."""
    kw = dict(kw)
    n = kw.pop("n")
    b = ss.generate_batch(n, **kw)
    out = {k: _h(b[k]) for k in _ARRAYS}
    out.update({k: _h(list(b[k])) for k in _LISTS})
    out["concepts"] = _h([ss.report_concepts(r) for r in b["report"]])
    return out


def extra_hashes() -> dict:
    """``generate`` (list of dicts) and ``make_dataset`` (Hugging Face conversion) of a small set."""
    g = ss.generate(3, seed=5, image_size=64, anatomies=("breast", "thyroid"))
    out = {"generate": _h([{k: (v if not isinstance(v, np.ndarray) else _h(v)) for k, v in s.items()} for s in g])}
    ds = ss.make_dataset(3, split="val", seed=1, image_size=32).with_format("numpy")
    rows = ds[:]
    # arrays cast to the schema's dtypes, so a change of the `datasets` formatter's dtypes is not a diff
    out["make_dataset"] = _h({k: (_h(np.asarray(v).astype(_DTYPES[k])) if k in _ARRAYS else [str(x) for x in v])
                              for k, v in rows.items()})
    return out


def all_hashes() -> dict:
    res = {name: case_hashes(kw) for name, kw in CASES.items()}
    res["extra"] = extra_hashes()
    return res


# recorded before the refactor into a package (commit 0130992), see the module docstring; the
# make_dataset hash was recomputed from that same old code when its arrays got canonical dtypes
GOLDEN: dict = {'abdomen-linear-B': {'anatomy': '957e4f2e8d5b910e',
                      'attributes': '35330d81dc9b361b',
                      'box': 'd4690569128602d7',
                      'center': '43efa56a08f1d2d9',
                      'class_names': '563d1483100e18d9',
                      'concepts': '85a6162d38e6c5dc',
                      'id': 'c75c9491290749a9',
                      'image': 'efd8f1d0b2f2a5b9',
                      'label': '2836d979e2ec3dbc',
                      'label_map': '1cbb96bff3cf4eea',
                      'mask': 'ad6c797b849b1231',
                      'measurement': 'bb06a73ff88cfee4',
                      'pixel_spacing_mm': '3e2af02a14b481d9',
                      'probe': 'c78aeb6b81cca0ba',
                      'report': '8880e0895df0ff82',
                      'source': '42a6da082fbe0e4e',
                      'structures': '3f845c2cd0a6fcfa'},
 'abdomen-sector-128': {'anatomy': '957e4f2e8d5b910e',
                        'attributes': '9d039618b60f35f1',
                        'box': 'b9709be37bd11859',
                        'center': '17fffbf04a2863e0',
                        'class_names': '563d1483100e18d9',
                        'concepts': 'd947d184645ce968',
                        'id': 'a0a7cbd57ac013b1',
                        'image': 'bb8ba472379b4ae0',
                        'label': 'b8f66fbbff02f76a',
                        'label_map': '16a8ae00ce500fe4',
                        'mask': '9aca5f41c88f3068',
                        'measurement': 'deba85d7d2943bd2',
                        'pixel_spacing_mm': '14decbc14dd14907',
                        'probe': '92239afffe53d6b4',
                        'report': '1acac0e91be6b971',
                        'source': '42a6da082fbe0e4e',
                        'structures': '3f845c2cd0a6fcfa'},
 'breast-sector-C': {'anatomy': '9ba26a4508f4b775',
                     'attributes': 'bad6c860d1742da6',
                     'box': 'bc9b9a054ec89e7c',
                     'center': 'c7a8724c97d490ad',
                     'class_names': '563d1483100e18d9',
                     'concepts': '2f79a12ac32e1f33',
                     'id': 'a0a7cbd57ac013b1',
                     'image': '150e76c7d4d1ba8a',
                     'label': 'b8f66fbbff02f76a',
                     'label_map': '7ed3e25bd10c4081',
                     'mask': 'fe01f2c839ce5c5b',
                     'measurement': '18620b1d974040f9',
                     'pixel_spacing_mm': 'b34c64eb6fc6c792',
                     'probe': '92239afffe53d6b4',
                     'report': '63f97c7ecd1fac74',
                     'source': '42a6da082fbe0e4e',
                     'structures': '3f845c2cd0a6fcfa'},
 'concepts': {'anatomy': 'bb497d66157e51dd',
              'attributes': '9ac0ea71283e92cf',
              'box': 'a55100a5dccfef8e',
              'center': '74cf5d1bab29ac43',
              'class_names': '563d1483100e18d9',
              'concepts': '65e7267999c0117a',
              'id': '28eccfea2c06e103',
              'image': '06000580b100c449',
              'label': 'bb512a961d19492e',
              'label_map': '5dfcd13f0ee0f5d1',
              'mask': 'bca9f6aff8e26d30',
              'measurement': '174b04310bf8fa12',
              'pixel_spacing_mm': '118578da0b0f1bf9',
              'probe': '82977639b5638f59',
              'report': 'faa5a46c8192ef39',
              'source': 'ff63d35e6d61834b',
              'structures': '3f845c2cd0a6fcfa'},
 'extra': {'generate': 'acd93c98996d8500', 'make_dataset': '89922e74cc1589da'},
 'fixed-angular': {'anatomy': '04ca8d43bad33fcd',
                   'attributes': '40486de3c9126674',
                   'box': '36df9a3eb474bb6f',
                   'center': 'aff64497284a0ccf',
                   'class_names': '563d1483100e18d9',
                   'concepts': '00075f4ee968eede',
                   'id': '1fd1fdf2ace48d1d',
                   'image': 'f396a9ac3e1695fa',
                   'label': 'ba6f74e690f3edd4',
                   'label_map': 'ce11e2521c5c625f',
                   'mask': 'e860fca28518c3a0',
                   'measurement': 'f9272e7ef6b088dc',
                   'pixel_spacing_mm': '406ab7e2798361fe',
                   'probe': '82977639b5638f59',
                   'report': '4927f41402fb9b42',
                   'source': 'ff63d35e6d61834b',
                   'structures': '3f845c2cd0a6fcfa'},
 'fixed-indistinct': {'anatomy': '04ca8d43bad33fcd',
                      'attributes': '3f657020f8b77259',
                      'box': '4324d640ba5f96e8',
                      'center': 'aff64497284a0ccf',
                      'class_names': '563d1483100e18d9',
                      'concepts': '4b91abb5f6360b7e',
                      'id': '1fd1fdf2ace48d1d',
                      'image': 'fe65946458bd3900',
                      'label': 'bd6ecca711c6d679',
                      'label_map': '785e59b0704e62f2',
                      'mask': '53ecc4d7d336e816',
                      'measurement': '33b38a6a8bc66c73',
                      'pixel_spacing_mm': 'fdd7e4580cdbeaf0',
                      'probe': '82977639b5638f59',
                      'report': '469b2d9fbe5068ba',
                      'source': 'ff63d35e6d61834b',
                      'structures': '3f845c2cd0a6fcfa'},
 'fixed-microlob': {'anatomy': '04ca8d43bad33fcd',
                    'attributes': '7f75a539ad5b6f07',
                    'box': 'ea85fbbde6a7157b',
                    'center': 'aff64497284a0ccf',
                    'class_names': '563d1483100e18d9',
                    'concepts': 'fd90280ef3e3b8ca',
                    'id': '1fd1fdf2ace48d1d',
                    'image': '995f6223ac4a9464',
                    'label': 'bd6ecca711c6d679',
                    'label_map': '4ab58070030140e1',
                    'mask': '0fe2b230f65a932b',
                    'measurement': 'eda3bf2f2371c8bb',
                    'pixel_spacing_mm': 'fdd7e4580cdbeaf0',
                    'probe': '82977639b5638f59',
                    'report': '7940a446a1acebc1',
                    'source': 'ff63d35e6d61834b',
                    'structures': '3f845c2cd0a6fcfa'},
 'fixed-spiculated': {'anatomy': '04ca8d43bad33fcd',
                      'attributes': 'e5025f6e6e9c7d3a',
                      'box': '31a852a800b9b987',
                      'center': 'aff64497284a0ccf',
                      'class_names': '563d1483100e18d9',
                      'concepts': '4e60ffb0a4dcda42',
                      'id': '1fd1fdf2ace48d1d',
                      'image': 'cae9bf6639fe7c19',
                      'label': 'bd6ecca711c6d679',
                      'label_map': '6972d25c7632b74b',
                      'mask': '2a46fa4c58492595',
                      'measurement': '9d054a2d8893774f',
                      'pixel_spacing_mm': 'fdd7e4580cdbeaf0',
                      'probe': '82977639b5638f59',
                      'report': '8e8fe753232148b0',
                      'source': 'ff63d35e6d61834b',
                      'structures': '3f845c2cd0a6fcfa'},
 'mix-s0-128': {'anatomy': 'bb497d66157e51dd',
                'attributes': '9ac0ea71283e92cf',
                'box': '2f7f0ab1071b5d96',
                'center': '74cf5d1bab29ac43',
                'class_names': '563d1483100e18d9',
                'concepts': '883c499ca95ad734',
                'id': '28eccfea2c06e103',
                'image': '62a1e51e3f9b9119',
                'label': 'bb512a961d19492e',
                'label_map': '39b9a1ed7a9c0799',
                'mask': '5dd6fed30c77a0b0',
                'measurement': '10270748a7cd042a',
                'pixel_spacing_mm': '68cb1987e0410887',
                'probe': '82977639b5638f59',
                'report': '7d62be54148d5bc6',
                'source': 'ff63d35e6d61834b',
                'structures': '3f845c2cd0a6fcfa'},
 'mix-s0-64': {'anatomy': 'bb497d66157e51dd',
               'attributes': '9ac0ea71283e92cf',
               'box': 'a55100a5dccfef8e',
               'center': '74cf5d1bab29ac43',
               'class_names': '563d1483100e18d9',
               'concepts': '883c499ca95ad734',
               'id': '28eccfea2c06e103',
               'image': '06000580b100c449',
               'label': 'bb512a961d19492e',
               'label_map': '5dfcd13f0ee0f5d1',
               'mask': 'bca9f6aff8e26d30',
               'measurement': '174b04310bf8fa12',
               'pixel_spacing_mm': '118578da0b0f1bf9',
               'probe': '82977639b5638f59',
               'report': '7d62be54148d5bc6',
               'source': 'ff63d35e6d61834b',
               'structures': '3f845c2cd0a6fcfa'},
 'mix-s1-128': {'anatomy': '04ca8d43bad33fcd',
                'attributes': 'b2cac2b774f5be25',
                'box': '009bf19646387345',
                'center': 'aff64497284a0ccf',
                'class_names': '563d1483100e18d9',
                'concepts': 'fe3661f0502357b8',
                'id': '1fd1fdf2ace48d1d',
                'image': '19ceb2bc12fa39b4',
                'label': 'ae1d1413689d253c',
                'label_map': 'a116a76518858ab0',
                'mask': '52061fd09ba73eb1',
                'measurement': 'b1032f7ef933d5d9',
                'pixel_spacing_mm': '406ab7e2798361fe',
                'probe': '82977639b5638f59',
                'report': '2d64621f19ac207a',
                'source': 'ff63d35e6d61834b',
                'structures': '3f845c2cd0a6fcfa'},
 'mix-s1-64': {'anatomy': '04ca8d43bad33fcd',
               'attributes': 'b2cac2b774f5be25',
               'box': '7f1d9e917df84628',
               'center': 'aff64497284a0ccf',
               'class_names': '563d1483100e18d9',
               'concepts': 'fe3661f0502357b8',
               'id': '1fd1fdf2ace48d1d',
               'image': '1b02b2171d465030',
               'label': 'ae1d1413689d253c',
               'label_map': '853106d174a0d347',
               'mask': '05b7ff5fbce07bfe',
               'measurement': '540fc96ad7f1de30',
               'pixel_spacing_mm': 'fdd7e4580cdbeaf0',
               'probe': '82977639b5638f59',
               'report': '2d64621f19ac207a',
               'source': 'ff63d35e6d61834b',
               'structures': '3f845c2cd0a6fcfa'},
 'mix-s2-128': {'anatomy': 'a2d53c089430d7ba',
                'attributes': '0cdf6abbc164cb99',
                'box': 'ba2c51798746ead5',
                'center': '7027d4673aaa738a',
                'class_names': '563d1483100e18d9',
                'concepts': '105f3985bd3a68b5',
                'id': '3c38654a2178113d',
                'image': '339bba81450b9114',
                'label': 'dbe51712c0198309',
                'label_map': 'd8dc13cff937783a',
                'mask': 'b5ee649b1e78ad32',
                'measurement': 'f9673af76e7e5883',
                'pixel_spacing_mm': 'e13d32fc1f758e74',
                'probe': 'a7807024b8801aa5',
                'report': 'd7c558a6f5598e3e',
                'source': 'ff63d35e6d61834b',
                'structures': '3f845c2cd0a6fcfa'},
 'mix-s2-64': {'anatomy': 'a2d53c089430d7ba',
               'attributes': '0cdf6abbc164cb99',
               'box': '3d6689964512ee60',
               'center': '7027d4673aaa738a',
               'class_names': '563d1483100e18d9',
               'concepts': '105f3985bd3a68b5',
               'id': '3c38654a2178113d',
               'image': '3400adaf8d52c9fa',
               'label': 'dbe51712c0198309',
               'label_map': '9b93ae03a443bfc1',
               'mask': '9c2f7d88c10cf985',
               'measurement': '66a76efaeb5584f0',
               'pixel_spacing_mm': 'eb7051a40775ca50',
               'probe': 'a7807024b8801aa5',
               'report': 'd7c558a6f5598e3e',
               'source': 'ff63d35e6d61834b',
               'structures': '3f845c2cd0a6fcfa'},
 'mix-s3-128': {'anatomy': '794f43cbaf2770ab',
                'attributes': 'adb6850fa35b67d7',
                'box': '91bab6ff3c1a6ac5',
                'center': '3b07d535863d4eb6',
                'class_names': '563d1483100e18d9',
                'concepts': '6ac67deee1b79118',
                'id': '4940e9491b65e16d',
                'image': '50456b995b6b0695',
                'label': '32f42cf9f6014f2c',
                'label_map': 'cb809c45480ff128',
                'mask': 'ed7f38b8597a9bf9',
                'measurement': 'c49f063a86536a73',
                'pixel_spacing_mm': 'd92ac12d2e9a4032',
                'probe': '65739c8e16812d9e',
                'report': '3c2ff4512094afad',
                'source': 'ff63d35e6d61834b',
                'structures': '3f845c2cd0a6fcfa'},
 'mix-s3-64': {'anatomy': '794f43cbaf2770ab',
               'attributes': 'adb6850fa35b67d7',
               'box': '8ebd82558200e87d',
               'center': '3b07d535863d4eb6',
               'class_names': '563d1483100e18d9',
               'concepts': '6ac67deee1b79118',
               'id': '4940e9491b65e16d',
               'image': '81f27da17f61306c',
               'label': '32f42cf9f6014f2c',
               'label_map': 'e3fae31b9758a352',
               'mask': 'f0b875c66a41b24b',
               'measurement': 'c94281f36717125e',
               'pixel_spacing_mm': 'eb242ee40064c5af',
               'probe': '65739c8e16812d9e',
               'report': '3c2ff4512094afad',
               'source': 'ff63d35e6d61834b',
               'structures': '3f845c2cd0a6fcfa'},
 'no-artifacts': {'anatomy': '794f43cbaf2770ab',
                  'attributes': 'adb6850fa35b67d7',
                  'box': '8ebd82558200e87d',
                  'center': '3b07d535863d4eb6',
                  'class_names': '563d1483100e18d9',
                  'concepts': '6ac67deee1b79118',
                  'id': '4940e9491b65e16d',
                  'image': 'f938a4b97c5a273f',
                  'label': '32f42cf9f6014f2c',
                  'label_map': 'e3fae31b9758a352',
                  'mask': 'f0b875c66a41b24b',
                  'measurement': 'c94281f36717125e',
                  'pixel_spacing_mm': 'eb242ee40064c5af',
                  'probe': '65739c8e16812d9e',
                  'report': '3c2ff4512094afad',
                  'source': 'ff63d35e6d61834b',
                  'structures': '3f845c2cd0a6fcfa'},
 'node-D': {'anatomy': '3320f5f5f2e3efa5',
            'attributes': 'a6ceb7e5f57d6963',
            'box': '196352e7f31991cb',
            'center': '59ec88cdd663ca3d',
            'class_names': '563d1483100e18d9',
            'concepts': 'a5e01760e018196c',
            'id': '4940e9491b65e16d',
            'image': '2e26f1d6fe746670',
            'label': '32f42cf9f6014f2c',
            'label_map': 'e764348c315f7434',
            'mask': 'c79994a8fa499589',
            'measurement': 'a17403822324fe1f',
            'pixel_spacing_mm': '8b8059eb15e172a1',
            'probe': '82977639b5638f59',
            'report': 'a9394a33da95b733',
            'source': 'ff63d35e6d61834b',
            'structures': '3f845c2cd0a6fcfa'},
 'normal-noise': {'anatomy': 'dd30146cb961bc16',
                  'attributes': 'a9ab57f760108bd5',
                  'box': 'c12b231bd63673df',
                  'center': 'f138a5820b8f888b',
                  'class_names': '563d1483100e18d9',
                  'concepts': '905c414b61ebb0e9',
                  'id': 'b9afe3e05feea1e8',
                  'image': '94eceea3aeb9fe8d',
                  'label': '0878b3551e93f815',
                  'label_map': '65dd7242e7392061',
                  'mask': 'caff010206f5baaa',
                  'measurement': '443459d72185dded',
                  'pixel_spacing_mm': 'd718fee01d183f7a',
                  'probe': 'deae34c63b60faba',
                  'report': '543da9654fa46011',
                  'source': 'bfa8c2be46b002fd',
                  'structures': '3f845c2cd0a6fcfa'},
 'test-split': {'anatomy': '66c0044c1075c5eb',
                'attributes': '4d1260f3e1f96258',
                'box': '8d4750a33e84ec71',
                'center': '736c737a378b32c6',
                'class_names': '563d1483100e18d9',
                'concepts': 'ffcb7d50fff8eea7',
                'id': '53fb0afcffd7d65f',
                'image': '12736491f18d4f15',
                'label': 'f7c835770aa520d8',
                'label_map': '36b2fdc85ae676b2',
                'mask': '65f966b6d9ca37b2',
                'measurement': 'f36c2a95118b7e9e',
                'pixel_spacing_mm': '12cf13b988ac257c',
                'probe': '4235807c06cb5468',
                'report': 'e8fa0d0c82d7c826',
                'source': '42a6da082fbe0e4e',
                'structures': '3f845c2cd0a6fcfa'},
 'threaded-32': {'anatomy': '1cf9497951bb7452',
                 'attributes': 'd0b8e18f12c4340f',
                 'box': '7860d02534190a0f',
                 'center': '9b817dab72051fd2',
                 'class_names': '563d1483100e18d9',
                 'concepts': 'aba001409777c5b0',
                 'id': 'd7fc6a6826053f9b',
                 'image': 'a24ea9d3bf9d63bb',
                 'label': '1aea1823c985305c',
                 'label_map': '2d49474d817b14fc',
                 'mask': 'dddb4d75d19840d3',
                 'measurement': '5a2ffcc3b9daeeb2',
                 'pixel_spacing_mm': '13d8b1e88f592f83',
                 'probe': '4f799da14c0fc9b4',
                 'report': 'f6df7d171b2ba855',
                 'source': '38fafe86c18be32e',
                 'structures': '3f845c2cd0a6fcfa'},
 'thyroid-A-128': {'anatomy': 'b50c5ab0c45bc47a',
                   'attributes': 'f34f5cc85c45e9fd',
                   'box': '2f400172dd29ec4d',
                   'center': 'a62c1de89b9f15b8',
                   'class_names': '563d1483100e18d9',
                   'concepts': '68e04eee84c5f0e6',
                   'id': '26de8d745961c663',
                   'image': 'b37952fb5014b862',
                   'label': 'c0d40215a1bdad44',
                   'label_map': '97fdb675335e966e',
                   'mask': 'ee50151a2acaf757',
                   'measurement': 'fda0ccf65329de7f',
                   'pixel_spacing_mm': '5611d849db1e13f1',
                   'probe': 'c78aeb6b81cca0ba',
                   'report': 'a0592885c77d77dd',
                   'source': '42a6da082fbe0e4e',
                   'structures': '3f845c2cd0a6fcfa'}}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generate_batch_is_bit_identical(name):
    got = case_hashes(CASES[name])
    want = GOLDEN[name]
    diff = {k: (want[k], got[k]) for k in want if want[k] != got.get(k)}
    assert not diff, f"SonoSynth output changed for case {name!r} ({CASES[name]}): {diff}"
    assert set(got) == set(want)


def test_generate_and_make_dataset_are_bit_identical():
    got = extra_hashes()
    assert got == GOLDEN["extra"], f"generate/make_dataset output changed: {got} != {GOLDEN['extra']}"


if __name__ == "__main__":  # print the table to paste into GOLDEN
    import pprint

    table = all_hashes()
    if "--check" in sys.argv:
        bad = {k: v for k, v in table.items() if GOLDEN.get(k) != v}
        print("identical" if not bad else f"DIFFERENT: {sorted(bad)}")
    else:
        pprint.pprint(table, width=120, sort_dicts=True)
