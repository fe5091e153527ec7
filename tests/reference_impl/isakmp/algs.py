"""Algorithm choices shared by the IKEv1 tests."""

from __future__ import annotations

from reference_impl.crypto.ids import (
    DhId,
    Ikev1AhTransformId,
    Ikev1AuthAlgorithm,
    Ikev1EspTransformId,
)
from reference_impl.isakmp.constants import AuthMethod
from reference_impl.isakmp.proposals import Phase1Transform, Phase2Transform
from reference_impl.sa import IpsecProtocol

P1_AES256 = Phase1Transform(7, 256, 4, AuthMethod.PRE_SHARED_KEY, DhId.MODP_2048, 28800)
P1_AES128_SHA1 = Phase1Transform(7, 128, 2, AuthMethod.PRE_SHARED_KEY, DhId.ECP_256, 28800)
ESP_CBC = Phase2Transform(
    IpsecProtocol.ESP, Ikev1EspTransformId.ESP_AES_CBC, 128, Ikev1AuthAlgorithm.HMAC_SHA2_256
)
ESP_GCM = Phase2Transform(IpsecProtocol.ESP, Ikev1EspTransformId.ESP_AES_GCM_16, 256, None)
AH_SHA256 = Phase2Transform(
    IpsecProtocol.AH, Ikev1AhTransformId.AH_SHA2_256, None, Ikev1AuthAlgorithm.HMAC_SHA2_256
)
