# AES-128-GCM test cases 1-4 of McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)"
# (the NIST submission, appendix B): key, IV, plaintext, AAD, ciphertext, tag (hex).
_K3 = "feffe9928665731c6d6a8f9467308308"
_IV3 = "cafebabefacedbaddecaf888"
_P3 = ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
       "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
_C3 = ("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
       "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985")
VECTORS = [
    ("00" * 16, "00" * 12, "", "", "", "58e2fccefa7e3061367f1d57a4e7455a"),
    ("00" * 16, "00" * 12, "00" * 16, "", "0388dace60b6a392f328c2b971b2fe78",
     "ab6e47d42cec13bdf53a67b21257bddf"),
    (_K3, _IV3, _P3, "", _C3, "4d5c2af327cd64a62cf35abd2ba6fab4"),
    (_K3, _IV3, _P3[:120], "feedfacedeadbeeffeedfacedeadbeefabaddad2", _C3[:120],
     "5bc94fbc3221a5db94fae95ae7121a47"),
]
