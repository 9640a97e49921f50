/* broker.h: placeholder, being written. */
#pragma once
