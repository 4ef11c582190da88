//! Fixed-width little-endian field encoding shared by every message body, and the macros that
//! declare a message once and derive its encoder, decoder and test generator from that one list.
//!
//! Integers are little-endian and sized (never `usize`). A list is a `u32` count followed by its
//! entries; a string is a `u16` byte length followed by UTF-8; a byte string (`Bytes`) is a `u32`
//! length followed by that many opaque bytes; an optional string is a `u8` presence flag (0 or 1)
//! followed, when present, by the string. Every list, string and byte string has a named maximum
//! that the decoder checks against both the limit and the bytes actually left in the body before
//! allocating, so a hostile count can never make us reserve memory.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Reads fields from one frame body; every read is bounds-checked and fails with `Truncated`
/// rather than panicking, because the body comes from outside.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn remaining_bytes(&self) -> u32 {
        // Bodies are at most FRAME_BODY_SIZE_MAX_BYTES, far below u32::MAX.
        u32::try_from(self.bytes.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn take(
        &mut self,
        size_bytes: usize,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < size_bytes {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.bytes.split_at(size_bytes);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let head = self.take(N, field)?;
        let mut out = [0_u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
}

/// A value with a fixed-shape encoding. `ENCODED_SIZE_MIN_BYTES` is the smallest encoding, used to
/// reject list counts that the remaining body cannot possibly hold; `encoded_size_bytes` is the
/// size of this value's encoding, so that a sender can fill a frame without encoding twice.
pub(crate) trait Wire: Sized {
    const ENCODED_SIZE_MIN_BYTES: u32;
    fn encoded_size_bytes(&self) -> usize;
    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError>;
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

/// A variable-length value (list or string) whose maximum is given by the field that holds it.
pub(crate) trait BoundedWire: Sized {
    const ENCODED_SIZE_MIN_BYTES: u32;
    fn encoded_size_bytes(&self) -> usize;
    fn encode_bounded(
        &self,
        buf: &mut BytesMut,
        max: u32,
        field: &'static str,
    ) -> Result<(), EncodeError>;
    fn decode_bounded(
        reader: &mut Reader<'_>,
        max: u32,
        field: &'static str,
    ) -> Result<Self, DecodeError>;
}

macro_rules! wire_integer {
    ($($ty:ty => $read:ident),*) => {$(
        impl Wire for $ty {
            const ENCODED_SIZE_MIN_BYTES: u32 = std::mem::size_of::<$ty>() as u32;
            fn encoded_size_bytes(&self) -> usize {
                std::mem::size_of::<$ty>()
            }
            fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
                buf.put_slice(&self.to_le_bytes());
                Ok(())
            }
            fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
                reader.$read(field)
            }
        }
    )*};
}
wire_integer!(u8 => u8, u16 => u16, u32 => u32, u64 => u64, u128 => u128, i64 => i64);

impl Wire for bool {
    const ENCODED_SIZE_MIN_BYTES: u32 = 1;
    fn encoded_size_bytes(&self) -> usize {
        1
    }
    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u8(u8::from(*self));
        Ok(())
    }
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match reader.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidValue { field }),
        }
    }
}

/// Writes the `u32` length prefix of a list or byte string of `len` entries, or fails with
/// `too_long` when it is over `max`.
fn put_length_prefix(
    buf: &mut BytesMut,
    len: usize,
    max: u32,
    too_long: impl FnOnce(u64) -> EncodeError,
) -> Result<(), EncodeError> {
    let prefix = u32::try_from(len).ok().filter(|prefix| *prefix <= max);
    buf.put_u32_le(prefix.ok_or_else(|| too_long(len as u64))?);
    Ok(())
}

/// Reads the `u32` length prefix of a list or byte string, failing with `too_long` when it is
/// over `max`.
fn read_length_prefix(
    reader: &mut Reader<'_>,
    max: u32,
    field: &'static str,
    too_long: impl FnOnce(u32) -> DecodeError,
) -> Result<u32, DecodeError> {
    let prefix = reader.u32(field)?;
    if prefix > max {
        return Err(too_long(prefix));
    }
    Ok(prefix)
}

impl<T: Wire> BoundedWire for Vec<T> {
    const ENCODED_SIZE_MIN_BYTES: u32 = 4;
    fn encoded_size_bytes(&self) -> usize {
        4 + self.iter().map(Wire::encoded_size_bytes).sum::<usize>()
    }
    fn encode_bounded(
        &self,
        buf: &mut BytesMut,
        max: u32,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        put_length_prefix(buf, self.len(), max, |count| EncodeError::TooManyEntries {
            field,
            count,
            max,
        })?;
        for item in self {
            item.encode(buf)?;
        }
        Ok(())
    }
    fn decode_bounded(
        reader: &mut Reader<'_>,
        max: u32,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        let count = read_length_prefix(reader, max, field, |count| DecodeError::TooManyEntries {
            field,
            count,
            max,
        })?;
        // The count must also fit in what is left of the body, so the capacity below is bounded by
        // the bytes we actually received, not by what the peer claims.
        if u64::from(count) * u64::from(T::ENCODED_SIZE_MIN_BYTES)
            > u64::from(reader.remaining_bytes())
        {
            return Err(DecodeError::Truncated { field });
        }
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(T::decode(reader, field)?);
        }
        Ok(items)
    }
}

impl BoundedWire for String {
    const ENCODED_SIZE_MIN_BYTES: u32 = 2;
    fn encoded_size_bytes(&self) -> usize {
        2 + self.len()
    }
    fn encode_bounded(
        &self,
        buf: &mut BytesMut,
        max: u32,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        let size_bytes = u16::try_from(self.len())
            .ok()
            .filter(|size| u32::from(*size) <= max);
        let size_bytes = size_bytes.ok_or(EncodeError::StringTooLong {
            field,
            size_bytes: self.len() as u64,
            max,
        })?;
        buf.put_u16_le(size_bytes);
        buf.put_slice(self.as_bytes());
        Ok(())
    }
    fn decode_bounded(
        reader: &mut Reader<'_>,
        max: u32,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        let size_bytes = reader.u16(field)?;
        if u32::from(size_bytes) > max {
            return Err(DecodeError::StringTooLong {
                field,
                size_bytes,
                max,
            });
        }
        let bytes = reader.take(usize::from(size_bytes), field)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidValue { field })?;
        Ok(text.to_owned())
    }
}

/// Opaque bytes: a `u32` length, then the bytes. `Bytes` rather than `Vec<u8>` (which would be a
/// list of `u8`, the same on the wire) so that a decoded payload is one copy and clones share it.
impl BoundedWire for Bytes {
    const ENCODED_SIZE_MIN_BYTES: u32 = 4;
    fn encoded_size_bytes(&self) -> usize {
        4 + self.len()
    }
    fn encode_bounded(
        &self,
        buf: &mut BytesMut,
        max: u32,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        put_length_prefix(buf, self.len(), max, |size_bytes| {
            EncodeError::BytesTooLong {
                field,
                size_bytes,
                max,
            }
        })?;
        buf.put_slice(self);
        Ok(())
    }
    fn decode_bounded(
        reader: &mut Reader<'_>,
        max: u32,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        let size_bytes =
            read_length_prefix(reader, max, field, |size_bytes| DecodeError::BytesTooLong {
                field,
                size_bytes,
                max,
            })?;
        // `take` refuses a length the rest of the body cannot hold before anything is copied.
        let bytes = reader.take(size_bytes as usize, field)?;
        Ok(Bytes::copy_from_slice(bytes))
    }
}

impl BoundedWire for Option<String> {
    const ENCODED_SIZE_MIN_BYTES: u32 = 1;
    fn encoded_size_bytes(&self) -> usize {
        1 + self.as_ref().map_or(0, BoundedWire::encoded_size_bytes)
    }
    fn encode_bounded(
        &self,
        buf: &mut BytesMut,
        max: u32,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        match self {
            None => buf.put_u8(0),
            Some(text) => {
                buf.put_u8(1);
                text.encode_bounded(buf, max, field)?;
            }
        }
        Ok(())
    }
    fn decode_bounded(
        reader: &mut Reader<'_>,
        max: u32,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        match bool::decode(reader, field)? {
            false => Ok(None),
            true => Ok(Some(String::decode_bounded(reader, max, field)?)),
        }
    }
}

/// Declares a message struct whose fields are encoded in declaration order, and derives its
/// `Wire` impl (and, under `cfg(test)`, a proptest `Arbitrary` impl) from the same field list, so
/// the layout in `docs/protocol.md` is exactly the order of fields written here. A field followed
/// by `[MAX]` is a list or string bounded by the named constant `MAX`.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty $([$max:expr])? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// The bytes this value takes on the wire (for a message: its frame body, without
            /// the 24-byte header), whether or not it is within its limits.
            pub fn encoded_size_bytes(&self) -> usize {
                <Self as $crate::wire::Wire>::encoded_size_bytes(self)
            }
        }

        impl $crate::wire::Wire for $name {
            const ENCODED_SIZE_MIN_BYTES: u32 = 0 $( + $crate::wire::wire_field_size_min!($ty $(, $max)?) )*;

            fn encoded_size_bytes(&self) -> usize {
                0 $( + $crate::wire::wire_field_size!(self.$field, $ty $(, $max)?) )*
            }

            #[allow(unused_variables)]
            fn encode(&self, buf: &mut bytes::BytesMut) -> Result<(), $crate::error::EncodeError> {
                $( $crate::wire::wire_field_encode!(
                    self.$field, buf, concat!(stringify!($name), ".", stringify!($field)), $ty $(, $max)?
                ); )*
                Ok(())
            }

            #[allow(unused_variables)]
            fn decode(
                reader: &mut $crate::wire::Reader<'_>,
                _field: &'static str,
            ) -> Result<Self, $crate::error::DecodeError> {
                Ok(Self {
                    $( $field: $crate::wire::wire_field_decode!(
                        reader, concat!(stringify!($name), ".", stringify!($field)), $ty $(, $max)?
                    ), )*
                })
            }
        }

        #[cfg(test)]
        impl proptest::arbitrary::Arbitrary for $name {
            type Parameters = ();
            type Strategy = proptest::strategy::BoxedStrategy<Self>;
            fn arbitrary_with(_: ()) -> Self::Strategy {
                use proptest::strategy::Strategy;
                // Nested pairs rather than one flat tuple: proptest's tuples stop at 12 elements.
                $crate::wire::wire_nested_strategy!($( $crate::wire::wire_field_strategy!($ty $(, $max)?) ),*)
                    .prop_map(|$crate::wire::wire_nested_pattern!($( $field ),*)| Self { $( $field, )* })
                    .boxed()
            }
        }
    };
}

macro_rules! wire_field_size_min {
    ($ty:ty) => {
        <$ty as $crate::wire::Wire>::ENCODED_SIZE_MIN_BYTES
    };
    ($ty:ty, $max:expr) => {
        <$ty as $crate::wire::BoundedWire>::ENCODED_SIZE_MIN_BYTES
    };
}

macro_rules! wire_field_size {
    ($value:expr, $ty:ty) => {
        <$ty as $crate::wire::Wire>::encoded_size_bytes(&$value)
    };
    ($value:expr, $ty:ty, $max:expr) => {
        <$ty as $crate::wire::BoundedWire>::encoded_size_bytes(&$value)
    };
}

macro_rules! wire_field_encode {
    ($value:expr, $buf:ident, $name:expr, $ty:ty) => {
        $crate::wire::Wire::encode(&$value, $buf)?
    };
    ($value:expr, $buf:ident, $name:expr, $ty:ty, $max:expr) => {
        $crate::wire::BoundedWire::encode_bounded(&$value, $buf, $max, $name)?
    };
}

macro_rules! wire_field_decode {
    ($reader:ident, $name:expr, $ty:ty) => {
        <$ty as $crate::wire::Wire>::decode($reader, $name)?
    };
    ($reader:ident, $name:expr, $ty:ty, $max:expr) => {
        <$ty as $crate::wire::BoundedWire>::decode_bounded($reader, $max, $name)?
    };
}

/// `(a, (b, (c, Just(()))))` from the strategies `a, b, c`; `Just(())` for none.
#[cfg(test)]
macro_rules! wire_nested_strategy {
    () => {
        proptest::strategy::Just(())
    };
    ($first:expr $(, $rest:expr)*) => {
        ($first, $crate::wire::wire_nested_strategy!($( $rest ),*))
    };
}

/// The pattern `(a, (b, (c, ())))` that takes apart a value of `wire_nested_strategy!`.
#[cfg(test)]
macro_rules! wire_nested_pattern {
    () => {
        ()
    };
    ($first:ident $(, $rest:ident)*) => {
        ($first, $crate::wire::wire_nested_pattern!($( $rest ),*))
    };
}

#[cfg(test)]
macro_rules! wire_field_strategy {
    ($ty:ty) => {
        proptest::arbitrary::any::<$ty>()
    };
    ($ty:ty, $max:expr) => {
        <$ty as $crate::wire::BoundedStrategy>::strategy($max)
    };
}

/// Declares a fieldless enum carried on the wire as an integer code; unknown codes decode to
/// `InvalidValue`, because a v1 peer must not guess at a meaning it does not know.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $code:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant = $code, )*
        }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [Self] = &[ $( Self::$variant, )* ];

            /// The stable numeric code of this variant on the wire.
            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The variant with this code, if there is one.
            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $( $code => Some(Self::$variant), )*
                    _ => None,
                }
            }
        }

        impl $crate::wire::Wire for $name {
            const ENCODED_SIZE_MIN_BYTES: u32 = std::mem::size_of::<$repr>() as u32;
            fn encoded_size_bytes(&self) -> usize {
                std::mem::size_of::<$repr>()
            }
            fn encode(&self, buf: &mut bytes::BytesMut) -> Result<(), $crate::error::EncodeError> {
                $crate::wire::Wire::encode(&self.code(), buf)
            }
            fn decode(
                reader: &mut $crate::wire::Reader<'_>,
                field: &'static str,
            ) -> Result<Self, $crate::error::DecodeError> {
                let code = <$repr as $crate::wire::Wire>::decode(reader, field)?;
                Self::from_code(code).ok_or($crate::error::DecodeError::InvalidValue { field })
            }
        }

        #[cfg(test)]
        impl proptest::arbitrary::Arbitrary for $name {
            type Parameters = ();
            type Strategy = proptest::sample::Select<Self>;
            fn arbitrary_with(_: ()) -> Self::Strategy {
                proptest::sample::select(Self::ALL)
            }
        }
    };
}

pub(crate) use {
    wire_enum, wire_field_decode, wire_field_encode, wire_field_size, wire_field_size_min,
    wire_struct,
};
#[cfg(test)]
pub(crate) use {wire_field_strategy, wire_nested_pattern, wire_nested_strategy};

/// Generators for bounded fields: small lists and strings (so cases stay fast), always within the
/// field's maximum. Boundary sizes are covered by dedicated tests.
#[cfg(test)]
pub(crate) trait BoundedStrategy: Sized {
    fn strategy(max: u32) -> proptest::strategy::BoxedStrategy<Self>;
}

#[cfg(test)]
impl<T: proptest::arbitrary::Arbitrary + 'static> BoundedStrategy for Vec<T> {
    fn strategy(max: u32) -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::strategy::Strategy;
        proptest::collection::vec(proptest::arbitrary::any::<T>(), 0..=(max.min(8) as usize))
            .boxed()
    }
}

#[cfg(test)]
impl BoundedStrategy for String {
    fn strategy(max: u32) -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::strategy::Strategy;
        // Up to 4 bytes per char, so max / 4 chars always fits in max bytes.
        let chars_max = (max / 4).min(24);
        proptest::string::string_regex(&format!("\\PC{{0,{chars_max}}}"))
            .expect("valid regex")
            .boxed()
    }
}

#[cfg(test)]
impl BoundedStrategy for Bytes {
    fn strategy(max: u32) -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::strategy::Strategy;
        proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..=(max.min(32) as usize))
            .prop_map(Bytes::from)
            .boxed()
    }
}

#[cfg(test)]
impl BoundedStrategy for Option<String> {
    fn strategy(max: u32) -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::strategy::Strategy;
        proptest::option::of(String::strategy(max)).boxed()
    }
}
