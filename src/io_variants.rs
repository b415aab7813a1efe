//! `AsyncRead` and `AsyncWrite` for an enum of streams (plain TCP or TLS, whole or split),
//! by forwarding each call to the variant at hand: the client side (`proxy::stream`) and the
//! worker side (`upstream::stream`) both need it, and neither should import the other.

/// `AsyncRead` by forwarding to whichever variant it is.
macro_rules! read_by_variant {
    ($type:ty, $($variant:ident),+) => {
        impl ::tokio::io::AsyncRead for $type {
            fn poll_read(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &mut ::tokio::io::ReadBuf<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => ::std::pin::Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

/// `AsyncWrite` by forwarding to whichever variant it is.
macro_rules! write_by_variant {
    ($type:ty, $($variant:ident),+) => {
        impl ::tokio::io::AsyncWrite for $type {
            fn poll_write(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => ::std::pin::Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => ::std::pin::Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $(Self::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: ::std::pin::Pin<&mut Self>, cx: &mut ::std::task::Context<'_>) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => ::std::pin::Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => ::std::pin::Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

pub(crate) use {read_by_variant, write_by_variant};
