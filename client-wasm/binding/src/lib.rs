//! Data binding: Ballerina's rules for turning values into WebSocket messages and
//! messages into values, expressed with serde. Shared by the client
//! (`wasmsocket-client`) and the guest SDK (`wasmsocket-guest`).
//!
//! - [`to_message`]: strings go as text as they are, byte strings
//!   (`serde_bytes::ByteBuf`) as binary, [`Xml`] values as XML text, everything else as
//!   JSON text.
//! - [`from_message`]: a text message bound to `String` is taken as it is, to [`Xml<T>`]
//!   is parsed as XML, to anything else as JSON; a binary message bound to `Vec<u8>` or
//!   a byte buffer is taken as it is, to anything else it is read as UTF-8 text first.

use std::fmt;

use serde::de::{self, Visitor};
use serde::ser::{self, Impossible, Serialize};

/// A complete WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

type Result<T, E = BindError> = std::result::Result<T, E>;

/// The serde name that marks an [`Xml`] value; both directions look for it.
const XML: &str = "$wasmsocket::Xml";

#[cfg(feature = "xml")]
/// A value carried as XML text (quick-xml's serde mapping): Ballerina's `xml` type.
///
/// `client.write_message(&Xml(order))` sends `<Order>…</Order>` as a text frame;
/// `let Xml(order): Xml<Order> = client.read_message().await?` parses one.
#[cfg(feature = "xml")]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Xml<T>(pub T);

#[cfg(feature = "xml")]
impl<T: Serialize> Serialize for Xml<T> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(XML, &self.0)
    }
}

#[cfg(feature = "xml")]
impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Xml<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct XmlVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for XmlVisitor<T> {
            type Value = Xml<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an XML document")
            }
            fn visit_newtype_struct<D: de::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                T::deserialize(d).map(Xml)
            }
        }
        deserializer.deserialize_newtype_struct(XML, XmlVisitor(std::marker::PhantomData))
    }
}

/// Why a value could not be bound; the message says what did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindError(String);

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

impl ser::Error for BindError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl de::Error for BindError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn bind_error(error: impl fmt::Display) -> BindError {
    BindError(error.to_string())
}

/// Turns a value into the message Ballerina would send for it.
pub fn to_message<T: Serialize + ?Sized>(value: &T) -> Result<Message> {
    match value.serialize(Probe) {
        Ok(message) => Ok(message),
        Err(Probed::Other) => serde_json::to_string(value)
            .map(Message::Text)
            .map_err(|e| BindError(format!("JSON: {e}"))),
        Err(Probed::Failed(error)) => Err(BindError(error)),
    }
}

/// Binds a received message to `T`.
pub fn from_message<T: de::DeserializeOwned>(message: &Message) -> Result<T> {
    let payload = match message {
        Message::Text(text) => Payload::Text(text),
        Message::Binary(data) => Payload::Binary(data),
    };
    T::deserialize(payload)
}

/// The outcome of probing a value's top-level shape.
#[derive(Debug)]
enum Probed {
    /// Not a string, byte string or XML value: send it as JSON.
    Other,
    /// The value could not be serialized.
    Failed(String),
}

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probed::Other => f.write_str("not a plain value"),
            Probed::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Probed {}

impl ser::Error for Probed {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Probed::Failed(msg.to_string())
    }
}

/// A serializer that recognises strings, byte strings and [`Xml`] at the top level and
/// gives up (so JSON takes over) on everything else.
struct Probe;

macro_rules! other {
    ($($method:ident($($ty:ty),*) -> $ret:ty;)*) => {$(
        fn $method(self, $(_: $ty),*) -> Result<$ret, Probed> {
            Err(Probed::Other)
        }
    )*};
}

impl ser::Serializer for Probe {
    type Ok = Message;
    type Error = Probed;
    type SerializeSeq = Impossible<Message, Probed>;
    type SerializeTuple = Impossible<Message, Probed>;
    type SerializeTupleStruct = Impossible<Message, Probed>;
    type SerializeTupleVariant = Impossible<Message, Probed>;
    type SerializeMap = Impossible<Message, Probed>;
    type SerializeStruct = Impossible<Message, Probed>;
    type SerializeStructVariant = Impossible<Message, Probed>;

    fn serialize_str(self, v: &str) -> Result<Message, Probed> {
        Ok(Message::Text(v.to_owned()))
    }

    fn serialize_char(self, v: char) -> Result<Message, Probed> {
        Ok(Message::Text(v.to_string()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Message, Probed> {
        Ok(Message::Binary(v.to_vec()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Message, Probed> {
        if name == XML {
            #[cfg(feature = "xml")]
            return quick_xml::se::to_string(value)
                .map(Message::Text)
                .map_err(|e| Probed::Failed(format!("XML: {e}")));
            #[cfg(not(feature = "xml"))]
            return Err(Probed::Failed("XML binding needs the `xml` feature".into()));
        }
        value.serialize(self)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Message, Probed> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Message, Probed> {
        Err(Probed::Other)
    }

    other! {
        serialize_bool(bool) -> Message;
        serialize_i8(i8) -> Message;
        serialize_i16(i16) -> Message;
        serialize_i32(i32) -> Message;
        serialize_i64(i64) -> Message;
        serialize_u8(u8) -> Message;
        serialize_u16(u16) -> Message;
        serialize_u32(u32) -> Message;
        serialize_u64(u64) -> Message;
        serialize_f32(f32) -> Message;
        serialize_f64(f64) -> Message;
        serialize_none() -> Message;
        serialize_unit() -> Message;
        serialize_unit_struct(&'static str) -> Message;
        serialize_unit_variant(&'static str, u32, &'static str) -> Message;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }
}

/// A received payload as a serde deserializer that applies the binding rules.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'de> Payload<'de> {
    /// The payload as text: a binary payload is first read as UTF-8.
    fn text(self) -> Result<&'de str, BindError> {
        match self {
            Payload::Text(text) => Ok(text),
            Payload::Binary(data) => std::str::from_utf8(data)
                .map_err(|_| BindError("binary message is not UTF-8 text".into())),
        }
    }

    fn json<T>(
        self,
        f: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
        ) -> serde_json::Result<T>,
    ) -> Result<T, BindError> {
        let mut deserializer = serde_json::Deserializer::from_str(self.text()?);
        let value = f(&mut deserializer).map_err(|e| bind_error(format!("JSON: {e}")))?;
        deserializer
            .end()
            .map_err(|e| bind_error(format!("JSON: {e}")))?;
        Ok(value)
    }
}

macro_rules! json {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, BindError> {
            self.json(|de| de.$method($($arg,)* visitor))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Payload<'de> {
    type Error = BindError;

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        visitor.visit_borrowed_str(self.text()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        match self {
            Payload::Text(text) => visitor.visit_borrowed_bytes(text.as_bytes()),
            Payload::Binary(data) => visitor.visit_borrowed_bytes(data),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        match self {
            // `Vec<u8>` reads a binary message as it is.
            Payload::Binary(data) => visitor.visit_seq(
                de::value::SeqDeserializer::<_, BindError>::new(data.iter().copied()),
            ),
            Payload::Text(_) => self.json(|de| de.deserialize_seq(visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, BindError> {
        if name == XML {
            #[cfg(feature = "xml")]
            {
                let mut xml = quick_xml::de::Deserializer::from_str(self.text()?);
                return visitor
                    .visit_newtype_struct(&mut xml)
                    .map_err(|e| bind_error(format!("XML: {e}")));
            }
            #[cfg(not(feature = "xml"))]
            return Err(BindError("XML binding needs the `xml` feature".into()));
        }
        visitor.visit_newtype_struct(self)
    }

    json! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Command {
        Join { room: String },
        Leave,
    }

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    #[test]
    fn strings_go_as_they_are() {
        assert_eq!(to_message("hi \"there\"").unwrap(), text("hi \"there\""));
        assert_eq!(to_message(&String::from("x")).unwrap(), text("x"));
        let s: String = from_message(&text("{not json")).unwrap();
        assert_eq!(s, "{not json");
    }

    #[test]
    fn other_values_go_as_json() {
        assert_eq!(
            to_message(&Point { x: 1, y: 2 }).unwrap(),
            text(r#"{"x":1,"y":2}"#)
        );
        assert_eq!(to_message(&42).unwrap(), text("42"));
        assert_eq!(to_message(&vec![1, 2]).unwrap(), text("[1,2]"));
        assert_eq!(
            to_message(&Command::Leave).unwrap(),
            text(r#"{"type":"leave"}"#)
        );
        let point: Point = from_message(&text(r#"{"x":1,"y":2}"#)).unwrap();
        assert_eq!(point, Point { x: 1, y: 2 });
        let command: Command = from_message(&text(r#"{"type":"join","room":"a"}"#)).unwrap();
        assert_eq!(command, Command::Join { room: "a".into() });
        let value: serde_json::Value = from_message(&text("[true]")).unwrap();
        assert_eq!(value, serde_json::json!([true]));
    }

    #[test]
    fn byte_strings_go_as_binary() {
        let bytes = serde_bytes::ByteBuf::from(vec![0, 255]);
        assert_eq!(to_message(&bytes).unwrap(), Message::Binary(vec![0, 255]));
        let raw: Vec<u8> = from_message(&Message::Binary(vec![0, 1, 2])).unwrap();
        assert_eq!(raw, [0, 1, 2]);
        let buf: serde_bytes::ByteBuf = from_message(&Message::Binary(vec![9])).unwrap();
        assert_eq!(buf.into_vec(), [9]);
    }

    #[test]
    fn binary_binds_through_its_text() {
        let point: Point = from_message(&Message::Binary(br#"{"x":3,"y":4}"#.to_vec())).unwrap();
        assert_eq!(point, Point { x: 3, y: 4 });
        let s: String = from_message(&Message::Binary(b"plain".to_vec())).unwrap();
        assert_eq!(s, "plain");
        assert!(from_message::<String>(&Message::Binary(vec![0xff])).is_err());
    }

    #[cfg(feature = "xml")]
    #[test]
    fn xml_round_trips() {
        let message = to_message(&Xml(Point { x: 5, y: 6 })).unwrap();
        assert_eq!(message, text("<Point><x>5</x><y>6</y></Point>"));
        let Xml(point): Xml<Point> = from_message(&message).unwrap();
        assert_eq!(point, Point { x: 5, y: 6 });
    }

    #[test]
    fn binding_failures_are_errors() {
        for bad in ["{\"x\":1}", "nonsense", "{\"x\":1,\"y\":2} trailing"] {
            assert!(from_message::<Point>(&text(bad)).is_err(), "{bad}");
        }
        #[cfg(feature = "xml")]
        assert!(from_message::<Xml<Point>>(&text("<Point><x>a</x></Point>")).is_err());
    }
}
