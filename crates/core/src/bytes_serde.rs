//! Compact serialization of byte strings in stored records: hex text, where serde's
//! default would write an array of numbers (four times the size). Reading accepts
//! both forms, so records written before this format still load.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(bytes: &impl AsRef<[u8]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<Vec<u8>>,
{
    struct Bytes;
    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("hex text or an array of bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            hex::decode(v).map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    let bytes = d.deserialize_any(Bytes)?;
    T::try_from(bytes).map_err(|_| de::Error::custom("wrong length"))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct R {
        #[serde(with = "super")]
        v: Vec<u8>,
        #[serde(with = "super")]
        a: [u8; 2],
    }

    #[test]
    fn writes_hex_reads_both() {
        let r = R {
            v: vec![1, 255],
            a: [0, 16],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"v":"01ff","a":"0010"}"#);
        assert_eq!(serde_json::from_str::<R>(&text).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<R>(r#"{"v":[1,255],"a":[0,16]}"#).unwrap(),
            r
        );
        assert!(serde_json::from_str::<R>(r#"{"v":"01ff","a":"00"}"#).is_err());
    }
}
