//! Code tables. Each is declared once by [`code_enum!`], with an `Unknown(n)` variant so that
//! values this crate does not name still round-trip.

macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident : $ty:ty { $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this crate does not name.
            Unknown($ty),
        }

        impl $name {
            /// The code from its wire value.
            pub fn from_u8(v: $ty) -> Self {
                match v {
                    $( $value => Self::$variant, )*
                    n => Self::Unknown(n),
                }
            }

            /// The wire value.
            pub fn to_u8(self) -> $ty {
                match self {
                    $( Self::$variant => $value, )*
                    Self::Unknown(n) => n,
                }
            }
        }
    };
}

code_enum! {
    /// Controller error codes (Core Specification v5.4, Vol 1, Part F, 1.3).
    ErrorCode: u8 {
        /// Success.
        Success = 0x00,
        /// Unknown HCI Command.
        UnknownHciCommand = 0x01,
        /// Unknown Connection Identifier.
        UnknownConnectionIdentifier = 0x02,
        /// Hardware Failure.
        HardwareFailure = 0x03,
        /// Page Timeout.
        PageTimeout = 0x04,
        /// Authentication Failure.
        AuthenticationFailure = 0x05,
        /// PIN or Key Missing.
        PinOrKeyMissing = 0x06,
        /// Memory Capacity Exceeded.
        MemoryCapacityExceeded = 0x07,
        /// Connection Timeout.
        ConnectionTimeout = 0x08,
        /// Connection Limit Exceeded.
        ConnectionLimitExceeded = 0x09,
        /// ACL Connection Already Exists.
        ConnectionAlreadyExists = 0x0b,
        /// Command Disallowed.
        CommandDisallowed = 0x0c,
        /// Connection Rejected due to Limited Resources.
        RejectedLimitedResources = 0x0d,
        /// Connection Rejected due to Security Reasons.
        RejectedSecurityReasons = 0x0e,
        /// Connection Rejected due to Unacceptable BD_ADDR.
        RejectedUnacceptableBdAddr = 0x0f,
        /// Connection Accept Timeout Exceeded.
        ConnectionAcceptTimeoutExceeded = 0x10,
        /// Unsupported Feature or Parameter Value.
        UnsupportedFeatureOrParameterValue = 0x11,
        /// Invalid HCI Command Parameters.
        InvalidHciCommandParameters = 0x12,
        /// Remote User Terminated Connection.
        RemoteUserTerminatedConnection = 0x13,
        /// Remote Device Terminated Connection due to Low Resources.
        RemoteDeviceTerminatedLowResources = 0x14,
        /// Remote Device Terminated Connection due to Power Off.
        RemoteDeviceTerminatedPowerOff = 0x15,
        /// Connection Terminated By Local Host.
        ConnectionTerminatedByLocalHost = 0x16,
        /// Pairing Not Allowed.
        PairingNotAllowed = 0x18,
        /// Unsupported Remote Feature.
        UnsupportedRemoteFeature = 0x1a,
        /// Unspecified Error.
        UnspecifiedError = 0x1f,
        /// Insufficient Security.
        InsufficientSecurity = 0x2f,
        /// Simple Pairing Not Supported by Host.
        SimplePairingNotSupportedByHost = 0x37,
        /// Advertising Timeout.
        AdvertisingTimeout = 0x3c,
        /// Connection Terminated due to MIC Failure.
        ConnectionTerminatedMicFailure = 0x3d,
        /// Connection Failed to be Established / Synchronization Timeout.
        ConnectionFailedToBeEstablished = 0x3e,
        /// Unknown Advertising Identifier.
        UnknownAdvertisingIdentifier = 0x42,
    }
}

impl ErrorCode {
    /// Whether this is [`ErrorCode::Success`].
    pub fn is_success(self) -> bool {
        self == Self::Success
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?} ({:#04x})", self.to_u8())
    }
}

code_enum! {
    /// LE Meta event subevent codes (Vol 4, Part E, 7.7.65).
    LeSubeventCode: u8 {
        /// LE Connection Complete (7.7.65.1).
        ConnectionComplete = 0x01,
        /// LE Advertising Report (7.7.65.2).
        AdvertisingReport = 0x02,
        /// LE Connection Update Complete (7.7.65.3).
        ConnectionUpdateComplete = 0x03,
        /// LE Read Remote Features Complete (7.7.65.4).
        ReadRemoteFeaturesComplete = 0x04,
        /// LE Long Term Key Request (7.7.65.5).
        LongTermKeyRequest = 0x05,
        /// LE Data Length Change (7.7.65.7).
        DataLengthChange = 0x07,
        /// LE Enhanced Connection Complete (7.7.65.10).
        EnhancedConnectionComplete = 0x0a,
    }
}
