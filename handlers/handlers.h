/* handlers.h: placeholder, being written. */
#pragma once
