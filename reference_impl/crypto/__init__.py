"""The crypto registry: every cipher, MAC, PRF, key exchange and KDF the protocols use.

Protocol code gets all its cryptography from here (nothing else imports ``cryptography`` for
protocol work). Look transforms up by their IANA numbers (``ids``), get a frozen descriptor
that states key/IV/ICV/salt sizes, and ``prepare(key)`` it once per SA::

    alg = encr(EncrId.ENCR_AES_GCM_16, 128)      # alg.key_len == 20 (16 key + 4 salt)
    cipher = alg.prepare(keymat[: alg.key_len])   # AeadCipher, reused for every packet
    wire = cipher.seal(iv, plaintext, aad)        # ciphertext || ICV

See ``/work/notes/crypto-api.md`` for the contract with the driver and both IKE versions.
"""

from reference_impl.crypto.base import (
    AeadCipher,
    BlockCipher,
    DirectAead,
    IntegrityError,
    KeyExchange,
    Mac,
    Prf,
)
from reference_impl.crypto.dh import DhGroup, dh
from reference_impl.crypto.encr import EncrAlgorithm, encr
from reference_impl.crypto.ids import (
    DhId,
    EncrId,
    EsnId,
    Ikev1AhTransformId,
    Ikev1AuthAlgorithm,
    Ikev1EncrId,
    Ikev1EspTransformId,
    Ikev1HashId,
    IntegId,
    PrfId,
    TransformType,
)
from reference_impl.crypto.integ import IntegAlgorithm, integ
from reference_impl.crypto.kdf import (
    ChildKeys,
    IkeKeys,
    ikev2_child_keymat,
    ikev2_ike_keys,
    ikev2_psk_auth,
    ikev2_rekey_skeyseed,
    ikev2_signed_octets,
    ikev2_skeyseed,
    prf_plus,
)
from reference_impl.crypto.prf import PrfAlgorithm, prf

__all__ = [
    "AeadCipher",
    "BlockCipher",
    "ChildKeys",
    "DhGroup",
    "DhId",
    "DirectAead",
    "EncrAlgorithm",
    "EncrId",
    "EsnId",
    "IkeKeys",
    "Ikev1AhTransformId",
    "Ikev1AuthAlgorithm",
    "Ikev1EncrId",
    "Ikev1EspTransformId",
    "Ikev1HashId",
    "IntegAlgorithm",
    "IntegId",
    "IntegrityError",
    "KeyExchange",
    "Mac",
    "Prf",
    "PrfAlgorithm",
    "PrfId",
    "TransformType",
    "dh",
    "encr",
    "ikev2_child_keymat",
    "ikev2_ike_keys",
    "ikev2_psk_auth",
    "ikev2_rekey_skeyseed",
    "ikev2_signed_octets",
    "ikev2_skeyseed",
    "integ",
    "prf",
    "prf_plus",
]
